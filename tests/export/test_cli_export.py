"""`edgeft export` and `edgeft compress --format`: the table, the TensorRT line, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeft.export import EXPORTERS, PRECISIONS
from edgeft.export import tensorrt as trt_export
from edgeft.export.base import load_student
from edgeft.export.validate import build_reference
from tests.conftest import tiny_args
from tests.test_cli import one_line_error, run


def test_help_lists_every_format_and_precision():
    for command in (["export", "--help"], ["compress", "--help"]):
        result = run(command)
        assert result.exit_code == 0
        for name in EXPORTERS.names() + list(PRECISIONS):
            assert name in result.output, (command, name)


def test_export_prints_the_table_and_the_tensorrt_line(tiny_run):
    result = run(["export", str(tiny_run.root), "--format", "onnx,trt", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "onnx/model-fp32.onnx" in result.stdout and "100.00%" in result.stdout
    records = json.loads((tiny_run.root / "export.json").read_text())["engines"]
    assert [(r["format"], r["precision"]) for r in records] == [("onnx", "fp32"), ("tensorrt", "fp32")]
    if trt_export.unavailable() is not None:
        lines = [line for line in result.stdout.splitlines() if line.startswith("tensorrt fp32:")]
        assert len(lines) == 1 and "device-side build recipe" in lines[0]


def test_run_without_a_student(tmp_path):
    (tmp_path / "run").mkdir()
    one_line_error(run(["export", str(tmp_path / "run")]), "no trained student")


def test_missing_run_directory(tmp_path):
    one_line_error(run(["export", str(tmp_path / "nope")]), "no such run directory")


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--format", "onnx,tensorrtt", "unknown format 'tensorrtt' (did you mean 'tensorrt'"),
    ("--precision", "fp32,int4", "unknown precision 'int4'"),
    ("--format", ",", "--format: name at least one"),
])
def test_unknown_format_or_precision(tiny_run, flag, value, needle):
    one_line_error(run(["export", str(tiny_run.root), flag, value]), needle)


def test_int8_with_no_calibration_images(tiny_run):
    one_line_error(run(["export", str(tiny_run.root), "--precision", "int8", "--calib", "0"]),
                   "--calib 0", "int8 needs calibration images")
    split = json.loads(tiny_run.data_split.read_text())
    tiny_run.data_split.write_text(json.dumps({**split, "train": []}))
    one_line_error(run(["export", str(tiny_run.root), "--precision", "int8"]), "no readable training images")


def test_image_source_gone(tiny_run):
    split = json.loads(tiny_run.data_split.read_text())
    tiny_run.data_split.write_text(json.dumps({**split, "source": split["source"] + "-moved"}))
    one_line_error(run(["export", str(tiny_run.root)]), "image source", "is gone and no ref.npz")


def test_saved_images_stand_in_for_a_gone_source(tiny_run):
    """A run copied to a device without its images still validates, from ref.npz."""
    card, model = load_student(tiny_run)
    first = build_reference(tiny_run, card, model, 100)
    split = json.loads(tiny_run.data_split.read_text())
    tiny_run.data_split.write_text(json.dumps({**split, "source": split["source"] + "-moved"}))
    again = build_reference(tiny_run, card, model, 100)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.logits, again.logits)


def test_corrupt_onnx_file(tiny_run, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    one_line_error(run(["export", str(tiny_run.root), "--onnx", str(bad)]), "not a valid ONNX model")


def test_onnx_file_of_another_model(tiny_run, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    shape = ["N", 3, 64, 64]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    one_line_error(run(["export", str(tiny_run.root), "--onnx", str(tmp_path / "other.onnx")]),
                   "takes input ['N', 3, 64, 64]", "N×3×32×32")


def test_compress_then_export(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_args(tiny_data, out, "--format", "onnx", "--precision", "fp32,fp16"))
    assert result.exit_code == 0, result.output
    records = json.loads((out / "export.json").read_text())["engines"]
    assert [(r["precision"], r["passed"]) for r in records] == [("fp32", True), ("fp16", True)]
    assert "edgeft export" in result.stdout
    assert "pre-flight: resnet10t exports at opset 18 (onnx: checker + onnxruntime" in result.stderr
    assert {r["opset"] for r in records} == {18} and {r["batch"] for r in records} == {1}


def test_compress_rejects_a_bad_format_before_training(tiny_data, tmp_path):
    one_line_error(run(tiny_args(tiny_data, tmp_path / "run", "--format", "onnx,tflite")), "unknown format 'tflite'")
    assert not (tmp_path / "run").exists()
