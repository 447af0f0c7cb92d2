"""Engines behind one interface: loading by file type, inference, per-layer timing, no torch needed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import ConfigError, EdgeftError
from edgeft.runtime import BACKENDS, EngineOptions, backend_for, load, preprocess
from edgeft.runtime.base import InputSpec, precision_from_name
from tests.runtime.conftest import MEAN, STD

NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import edgeft.runtime, edgeft.runtime.profile, edgeft.runtime.agent, edgeft.runtime.dispatch, edgeft.runtime.calibrate
import edgeft.targets, edgeft.targets.estimate, edgeft.targets.host
from edgeft.runtime.profile import ProfileConfig, profile_engine
record = profile_engine(sys.argv[1], cfg=ProfileConfig(iterations=3, seconds=0, warmup=1, sweep=False, layer_runs=1))
from click.testing import CliRunner
from edgeft.cli import cli
assert CliRunner().invoke(cli, ["targets", "--json"]).exit_code == 0  # the device-side CLI path
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None], "torch was imported"
print(record["latency_ms"]["p50"] > 0)
"""


def test_runtime_and_targets_work_with_torch_blocked(tiny_onnx: Path) -> None:
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(tiny_onnx)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_backend_is_picked_by_file_type(tmp_path: Path) -> None:
    assert backend_for(tmp_path / "m.onnx") == "onnxruntime"
    assert backend_for(tmp_path / "m.xml") == "openvino"
    assert backend_for(tmp_path / "m.engine") == "tensorrt"
    assert backend_for(tmp_path) == "torch"
    with pytest.raises(EdgeftError, match="unknown engine type '.pt'"):
        backend_for(tmp_path / "m.pt")
    assert {"onnxruntime", "openvino", "tensorrt", "torch"} <= set(BACKENDS.names())


def test_load_rejects_missing_files_wrong_backends_and_typos(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="file not found"):
        load(tmp_path / "absent.onnx")
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    with pytest.raises(EdgeftError, match="--backend onnxruntime: cannot open m.xml"):
        load(xml, "onnxruntime")
    with pytest.raises(ConfigError, match="did you mean 'openvino'"):
        load(tiny_onnx, "openvno")


def test_corrupt_onnx_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgeftError, match="onnxruntime cannot load it"):
        with load(bad):
            pass


def test_onnxruntime_engine_reads_card_and_infers(tiny_onnx: Path) -> None:
    with load(tiny_onnx, options=EngineOptions(threads=1)) as engine:
        spec = engine.input_spec
        assert spec.shape == (None, 3, 16, 16) and spec.dynamic_batch
        assert spec.mean == MEAN and spec.std == STD
        out = engine.infer(spec.example(3))
        assert out.shape == (3, 10) and np.isfinite(out).all()
        assert engine.precision() == "fp32"  # from the file name tiny-fp32.onnx
        with pytest.raises(EdgeftError, match="does not match"):
            engine.infer(np.zeros((1, 3, 8, 8), np.float32))
        layers = engine.layer_times(spec.example(1), runs=2)
    assert {layer["op"] for layer in layers} >= {"Conv"}
    assert all(layer["ms"] >= 0 for layer in layers)


def test_infer_needs_an_open_engine(tiny_onnx: Path) -> None:
    engine = load(tiny_onnx)
    with pytest.raises(EdgeftError, match="not open"):
        engine.infer(np.zeros((1, 3, 16, 16), np.float32))


def test_openvino_agrees_with_onnxruntime(tiny_onnx: Path) -> None:
    pytest.importorskip("openvino")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with load(tiny_onnx) as ort_engine:
        expected = ort_engine.infer(x)
    with load(tiny_onnx, "openvino", EngineOptions(threads=1)) as ov_engine:
        got = ov_engine.infer(x)
        layers = ov_engine.layer_times(x, runs=2)
        assert ov_engine.info()["inference_precision"] == "f32"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert any("Convolution" in layer["op"] for layer in layers)


def test_torch_backend_runs_the_student_like_its_onnx(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", num_classes=3, exportable=True).eval()
    (tmp_path / "student").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "student" / "model.safetensors"))
    card = {"arch": "resnet10t", "num_classes": 3, "class_names": ["a", "b", "c"], "input_size": [3, 32, 32],
            "mean": list(MEAN), "std": list(STD), "teacher": "", "method": "stl"}
    (tmp_path / "student" / "card.json").write_text(json.dumps(card))
    onnx_path = tmp_path / "student.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(onnx_path), input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with load(tmp_path, options=EngineOptions(threads=1, device="cpu")) as engine:
        assert engine.input_spec.mean == MEAN
        got = engine.infer(x)
        layers = engine.layer_times(x, runs=2)
    with load(onnx_path) as ort_engine:
        np.testing.assert_allclose(got, ort_engine.infer(x), rtol=1e-3, atol=1e-4)
    assert any(layer["op"] == "Conv2d" for layer in layers)


def test_preprocess_scales_transposes_and_normalises() -> None:
    spec = InputSpec("input", (None, 3, 2, 2), mean=MEAN, std=STD)
    images = np.full((1, 2, 2, 3), 255, np.uint8)
    x = preprocess(images, spec)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array(MEAN)) / np.array(STD), rtol=1e-6)


def test_static_batch_engines_refuse_other_batches() -> None:
    spec = InputSpec("input", (1, 3, 4, 4))
    assert spec.accepts(1) and not spec.accepts(2)
    with pytest.raises(EdgeftError, match="--batch 2"):
        spec.example(2)


@pytest.mark.parametrize("name, expected", [("model-fp16.onnx", "fp16"), ("model_int8.xml", "int8"), ("net.onnx", None)])
def test_precision_from_name(name: str, expected: str | None) -> None:
    assert precision_from_name(Path(name)) == expected


@pytest.mark.tensorrt
def test_tensorrt_engine_builds_and_infers_on_a_gpu(tiny_onnx: Path) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda")
    with load(tiny_onnx, "tensorrt") as engine:
        x = engine.input_spec.example(2)
        out = engine.infer(x)
        layers = engine.layer_times(x, runs=2)
    with load(tiny_onnx) as ort_engine:
        np.testing.assert_allclose(out, ort_engine.infer(x), rtol=1e-2, atol=1e-2)
    assert layers
