"""Pre-flight: the untrained student is exported and read by every target runtime before training."""
from __future__ import annotations

import pytest
import torch
from timm.models import register_model
from torch import nn

from edgeft.errors import EdgeftError
from edgeft.export import preflight as pf
from edgeft.export import tensorrt as trt_export
from tests.conftest import tiny_args
from tests.test_cli import one_line_error, run

UNEXPORTABLE = "edgeft_test_svdnet"


class SvdNet(nn.Module):
    """Singular values as features: torch.onnx has no ONNX function for aten._linalg_svd."""

    def __init__(self, num_classes: int = 10, **_: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.linalg.svdvals(self.conv(x).flatten(2)))


@register_model
def edgeft_test_svdnet(pretrained: bool = False, num_classes: int = 10, **kwargs) -> nn.Module:
    return SvdNet(num_classes)


def test_an_unexportable_student_fails_preflight_before_any_training(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(tiny_data, out, "--format", "onnx,openvino")
    args[args.index("--student") + 1] = UNEXPORTABLE
    one_line_error(run(args), f"pre-flight: cannot export the student '{UNEXPORTABLE}' to ONNX",
                   "unsupported operator aten._linalg_svd", "pick another --student")
    assert not (out / "checkpoints").exists() and not (out / "student").exists()


def test_preflight_reads_the_student_with_every_runtime_at_the_picked_opset():
    result = pf.run_preflight("test_resnet", ["onnx", "ov", "trt"], (3, 32, 32))
    assert result.arch == "test_resnet" and result.opset == 18
    assert list(result.checks) == ["onnx", "openvino", "tensorrt"]
    assert result.checks["onnx"].startswith("checker + onnxruntime")
    assert result.checks["openvino"].startswith("converted + compiled on CPU")
    if trt_export.unavailable() is not None:
        assert result.checks["tensorrt"].startswith("ONNX check only")
    assert result.summary().startswith("pre-flight: test_resnet exports at opset 18 (onnx: checker")


def test_a_runtime_refusal_names_the_format_the_student_and_the_opset(monkeypatch):
    def refuse(path, batch):
        raise EdgeftError("onnxruntime 1.0: unsupported operator Foo: no kernel")

    monkeypatch.setitem(pf.CHECKS, "onnx", refuse)
    monkeypatch.setattr(pf, "MIN_OPSET", 18)  # no lower opset to try: one export
    with pytest.raises(EdgeftError, match=r"^pre-flight: onnx cannot run the untrained student 'test_resnet' "
                                          r"\(onnxruntime 1.0: unsupported operator Foo: no kernel\) at opset 18;"):
        pf.run_preflight("test_resnet", ["onnx"], (3, 32, 32))


def test_the_opset_is_the_highest_the_installed_runtimes_read(monkeypatch):
    assert pf.pick_opset(["onnx", "openvino"]) == 18 <= pf._onnxruntime_opset()
    monkeypatch.setattr(pf, "library_version", lambda name: "8.6.1" if name == "tensorrt" else None)
    assert pf.pick_opset(["tensorrt"]) == 17 and pf.pick_opset(["openvino"]) == 18
    monkeypatch.setattr(pf, "library_version", lambda name: None)  # built on the device, TensorRT >= 10
    assert pf.pick_opset(["trt"]) == 18


def test_an_unknown_student_fails_preflight_with_one_line():
    with pytest.raises(EdgeftError, match="pre-flight: cannot build the student 'no_such_net'"):
        pf.run_preflight("no_such_net", ["onnx"])
