"""Exporters: every format × precision exports and validates; ONNX matches PyTorch independently."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from edgeft.errors import EdgeftError, StrictError
from edgeft.export import EXPORTERS, PRECISIONS, export_run, read_records
from edgeft.export import tensorrt as trt_export
from edgeft.export.onnx import CARD_KEY, OnnxExporter
from edgeft.export.quantize import TENSORRT_SCHEME, cpu_scheme, label_of, read_split
from edgeft.export.validate import Tolerance

pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.fixture(scope="module")
def exported(shared_run):
    """Every registered format at every precision, once for the module."""
    result = export_run(shared_run.root, EXPORTERS.names(), PRECISIONS, calib=8)
    assert not result.refused
    return {(r.format, r.precision): r for r in result.records}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fmt", EXPORTERS.names())
def test_every_format_and_precision_is_validated(exported, shared_run, fmt, precision):
    record = exported[(fmt, precision)]
    assert record.passed and record.images == 18
    assert (shared_run.root / record.path).is_file()
    assert record.size_bytes >= (shared_run.root / record.path).stat().st_size
    assert record.top1_agreement == 1.0 and record.cosine > 0.99
    assert record.max_abs_diff < {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.5}[precision]
    assert record.versions["torch"] == torch.__version__.split("+")[0]
    stored = {(r.format, r.precision): r for r in read_records(shared_run.root)}
    assert stored[(fmt, precision)] == record


def test_static_batch_1_engines_validate_and_profile_at_batch_1(exported, shared_run):
    from edgeft.runtime.dispatch import profile_on_target
    from edgeft.runtime.profile import ProfileConfig

    assert {r.batch for r in exported.values()} == {1}
    cfg = ProfileConfig(warmup=1, iterations=3, seconds=0, threads=1, layers=False)
    records = profile_on_target(shared_run.root, "host", "openvino", cfg)
    assert [r["input"]["shape"][0] for r in records] == [1, 1, 1]
    assert [[row["batch"] for row in r["throughput"]["sweep"]] for r in records] == [[1]] * 3


def test_int8_and_fp16_shrink_the_engine(exported):
    sizes = {p: exported[("onnx", p)].size_bytes for p in PRECISIONS}
    assert sizes["int8"] < 0.4 * sizes["fp32"] and sizes["fp16"] < 0.6 * sizes["fp32"]


def test_reference_and_calibration_files(exported, shared_run):
    ref = np.load(shared_run.root / "ref.npz")
    assert ref["images"].dtype == np.uint8 and ref["images"].shape == (18, 3, 32, 32)
    assert ref["logits"].shape == (18, 3) and ref["labels"].tolist().count(0) == 6
    calib = np.load(shared_run.root / "calib.npz")
    assert calib["images"].shape == (8, 3, 32, 32)


def test_independent_onnxruntime_reproduces_pytorch(exported, shared_run):
    import onnx
    import onnxruntime as ort

    path = shared_run.root / exported[("onnx", "fp32")].path
    model = timm.create_model("test_resnet", num_classes=3, exportable=True).eval()
    model.load_state_dict(load_file(str(shared_run.student_weights)))
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name  # a static batch-1 graph: one image at a time
    got = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    assert np.abs(got - expected).max() <= 1e-4
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # static batch 1 by default
    card = json.loads({p.key: p.value for p in proto.metadata_props}[CARD_KEY])
    assert card["class_names"] == ["blue", "green", "red"] and card["input_size"] == [3, 32, 32]


@pytest.mark.skipif(trt_export.unavailable() is None, reason="tensorrt and a GPU are present: engines are built")
def test_tensorrt_without_gpu_writes_onnx_and_recipe(exported, shared_run):
    record = exported[("tensorrt", "fp16")]
    assert record.path.endswith("model-fp16.onnx") and "build the engine on the target device" in record.note
    assert "\n" not in record.note
    assert "--stronglyTyped" in record.recipe["trtexec"] and "Shapes" not in record.recipe["trtexec"]  # static
    assert record.recipe["edgeft"].endswith("--format tensorrt --precision fp16")
    script = shared_run.root / "engines" / "tensorrt" / "build-fp16.sh"
    assert script.stat().st_mode & 0o111 and record.recipe["trtexec"] in script.read_text()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(trt_export.unavailable() is not None, reason="needs tensorrt and a CUDA GPU")
def test_tensorrt_engine_builds_and_validates(tiny_run):
    records = export_run(tiny_run.root, ["tensorrt"], PRECISIONS, calib=8).records
    assert len(records) == len(PRECISIONS)
    for record in records:
        assert record.path.endswith(".engine") and record.passed and not record.note
        assert record.validated_with.startswith("tensorrt")
    assert (tiny_run.engines / "tensorrt" / "timing.cache").is_file()


def test_failed_validation_deletes_the_engine_refuses_it_and_keeps_the_others(tiny_run, monkeypatch):
    impossible = Tolerance(atol=0.0, min_cosine=1.1, min_top1=1.0, max_accuracy_drop=0.0)
    monkeypatch.setattr(OnnxExporter, "tolerances", {**OnnxExporter.tolerances, "fp32": impossible})
    result = export_run(tiny_run.root, ["onnx"], ["fp32", "fp16"])
    assert not (tiny_run.engines / "onnx" / "model-fp32.onnx").exists()
    assert (tiny_run.engines / "onnx" / "model-fp16.onnx").exists()
    assert [(r.format, r.precision) for r in read_records(tiny_run.root)] == [("onnx", "fp16")]
    (refusal,) = result.refused
    assert (refusal.format, refusal.precision) == ("onnx", "fp32")
    assert re.search("onnx fp32 export failed validation .*cosine.*engine was deleted", refusal.reason)
    assert [(o["precision"], o["status"]) for o in result.outcomes()] == [("fp32", "refused"), ("fp16", "passed")]
    stored = json.loads((tiny_run.root / "export.json").read_text())
    assert stored["refused"] == [refusal.to_json()]
    result.check()  # one onnx engine passed: acceptable
    with pytest.raises(StrictError, match="--strict: 1 engine"):
        result.check(strict=True)


def test_a_format_without_any_engine_that_passed_fails_the_check(tiny_run, monkeypatch):
    impossible = Tolerance(atol=0.0, min_cosine=1.1, min_top1=1.0, max_accuracy_drop=0.0)
    monkeypatch.setattr(OnnxExporter, "tolerances", {"fp32": impossible})
    result = export_run(tiny_run.root, ["onnx"], ["fp32"])
    with pytest.raises(EdgeftError, match="no onnx engine passed"):
        result.check()


def test_a_quantiser_that_raises_refuses_int8_alone(tiny_run, monkeypatch):
    import edgeft.export.onnx as onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("calibration blew up")

    monkeypatch.setattr(onnx_export, "quantize_onnx_bounded", broken)
    result = export_run(tiny_run.root, ["onnx", "tensorrt"], ["fp32", "int8"], calib=8)
    assert {(r.format, r.precision) for r in result.records} == {("onnx", "fp32"), ("tensorrt", "fp32")}
    reasons = {(r.format, r.precision): r.reason for r in result.refused}
    assert "calibration blew up" in reasons[("onnx", "int8")]
    # TensorRT int8 is quantised on its own (symmetric S8S8 ONNX): the same quantiser refuses it, named
    assert reasons[("tensorrt", "int8")] == "onnx int8-tensorrt: the conversion failed (calibration blew up)"
    result.check()


def test_export_from_a_given_onnx(exported, shared_run):
    records = export_run(shared_run.root, ["ov"], ["fp32"], onnx=shared_run.root / exported[("onnx", "fp32")].path).records
    assert records[0].format == "openvino" and records[0].passed


def _activation_types(path) -> set[str]:
    """Element types of the activations' quantization (QuantizeLinear nodes; weights are stored quantized)."""
    import onnx

    graph = onnx.load(str(path)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    return {onnx.TensorProto.DataType.Name(types[node.input[2]]) for node in graph.node
            if node.op_type == "QuantizeLinear"}


def test_onnxruntime_int8_is_in_the_host_scheme_and_tensorrt_int8_symmetric_signed(exported, shared_run):
    onnx_q = exported[("onnx", "int8")].quantization
    trt_q = exported[("tensorrt", "int8")].quantization
    assert onnx_q["scheme"] == cpu_scheme().to_json() and trt_q["scheme"] == TENSORRT_SCHEME.to_json()
    expected = {"UINT8" if cpu_scheme().activations == "uint8" else "INT8"}
    assert _activation_types(shared_run.root / exported[("onnx", "int8")].path) == expected
    assert _activation_types(shared_run.engines / "tensorrt" / "model-int8.onnx") == {"INT8"}


@pytest.mark.parametrize(("flags", "name", "activations", "reduce_range"), [
    ({"avx2", "avx512f", "avx512_vnni"}, "u8s8", "uint8", False),
    ({"avx2", "avx_vnni"}, "u8s8", "uint8", False),
    ({"avx2", "avx512f"}, "u8s8-reduced", "uint8", True),
    ({"asimd", "asimddp"}, "s8s8-symmetric", "int8", False),
])
def test_int8_scheme_follows_the_cpu_flags(flags, name, activations, reduce_range):
    scheme = cpu_scheme(flags)
    assert (scheme.name, scheme.activations, scheme.reduce_range) == (name, activations, reduce_range)
    assert scheme.symmetric_activations == (activations == "int8")


def test_reader_matches_compress_evaluation(tiny_run):
    from edgeft.compress.data import ImageDataset, build_transform, open_image_folder

    split = json.loads(tiny_run.data_split.read_text())
    images, labels = read_split(tiny_run, "val", 100, 32)
    splits = open_image_folder(split["source"])
    val = ImageDataset(splits.store, splits.val, 32, build_transform(32, train=False))
    assert len(images) == len(val) == 18 and set(labels.tolist()) == {0, 1, 2}
    ours = {(int(lbl), img.tobytes()) for img, lbl in zip(images, labels)}
    theirs = {(int(y), (x * 255).round().to(torch.uint8).numpy().tobytes()) for x, y in val}
    assert ours == theirs


def test_label_of_takes_the_deepest_class_folder():
    assert label_of("cifar10/train/cat/sub/0001.jpg", ["cat", "dog"]) == 0
    assert label_of("dog/0001.jpg", ["cat", "dog"]) == 1
    with pytest.raises(EdgeftError, match="no class folder"):
        label_of("train/0001.jpg", ["cat", "dog"])


def test_export_never_imports_compress():
    code = ("import sys, edgeft.export; "
            "bad = [m for m in sys.modules if m.startswith('edgeft.compress')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_converter_crash_refuses_that_engine_and_the_line_goes_on(tmp_path, monkeypatch, tiny_data):
    from click.testing import CliRunner

    from edgeft.cli import cli
    from edgeft.export import export_run
    from edgeft.export.openvino import OpenVinoExporter
    from tests.conftest import tiny_args

    run = tmp_path / "run"
    args = tiny_args(tiny_data, run, "--method", "stl")
    args[args.index("--image-size") + 1] = "32"
    assert CliRunner().invoke(cli, args).exit_code == 0

    def crash(self, job, precision):
        raise RuntimeError("Check 'false' failed: Model wasn't fully converted")

    monkeypatch.setattr(OpenVinoExporter, "export", crash)
    result = export_run(run, ["onnx", "openvino"], ["fp32"])
    assert [(r.format, r.precision) for r in result.records] == [("onnx", "fp32")]
    assert [(r.format, r.reason) for r in result.refused] == [
        ("openvino", "openvino fp32: the conversion failed (RuntimeError: Check 'false' failed: Model wasn't fully converted)")]


def test_each_format_is_run_by_the_one_backend_that_declares_it():
    from edgeft.runtime import BACKENDS, FORMAT_BACKEND, format_of, target_formats
    from edgeft.targets import get_target

    for name in EXPORTERS.names():  # the exporter validates with the backend whose engine declares its format
        assert format_of(EXPORTERS.get(name)().runtime) == name
    assert sorted(FORMAT_BACKEND.values()) == sorted(BACKENDS.names())
    assert target_formats(get_target("jetson")) == ["tensorrt", "onnx"]
    assert "torch" not in target_formats(get_target("host"))  # the student is the reference, not an export
