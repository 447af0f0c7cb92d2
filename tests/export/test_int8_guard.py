"""--max-drop on a real ONNX Runtime quantization: a student whose INT8 collapses falls back or is refused.

The student is test_resnet with a fitted head (100 % on the colour images) and outlier
channels planted without changing its function: a BatchNorm channel scaled by K and the
next convolution's input channel by 1/K. Per-tensor INT8 activations then cannot represent
the other channels of that tensor, whatever the calibrator, so accuracy collapses.
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgeft.export import export_run
from edgeft.export.base import load_student
from edgeft.export.quantize import cpu_scheme, normalise, read_split
from tests.conftest import tiny_args
from tests.export.conftest import SIZE, make_run
from tests.test_cli import one_line_error, run

K = 1000.0
FIRST = [("conv1.1", "conv1.3")]  # (BatchNorm scaled up, convolution that reads it scaled down)
EVERYWHERE = FIRST + [("conv1.4", "conv1.6"), ("layer1.0.bn1", "layer1.0.conv2"), ("layer2.0.bn1", "layer2.0.conv2"),
                      ("layer3.0.bn1", "layer3.0.conv2"), ("layer3.0.bn2", "layer3.0.conv3"),
                      ("layer4.0.bn1", "layer4.0.conv2")]


def outlier_run(root, places):
    """A run whose student is accurate in float and has an outlier channel after each BatchNorm in `places`."""
    run_dir = make_run(root)
    card, model = load_student(run_dir)
    images, labels = read_split(run_dir, "train", 100, SIZE)
    with torch.no_grad():
        for module in model.modules():  # timm zero-initialises each block's last BatchNorm
            if isinstance(module, torch.nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(1.0)
        features = model.forward_head(model.forward_features(torch.from_numpy(normalise(images, card))),
                                      pre_logits=True)
        targets = torch.nn.functional.one_hot(torch.from_numpy(labels), card.num_classes).float() * 2 - 1
        solution = torch.linalg.lstsq(torch.cat([features, torch.ones(len(features), 1)], 1), targets).solution
        model.fc.weight.copy_(solution[:-1].T)
        model.fc.bias.copy_(solution[-1])
        for bn, conv in places:
            bn, conv = model.get_submodule(bn), model.get_submodule(conv)
            bn.weight[0] *= K
            bn.bias[0] *= K
            conv.weight[:, 0] /= K
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run_dir.student_weights))
    return run_dir


def fp32_onnx(run_dir):
    """The student's fp32 ONNX from torch's TorchScript exporter (seconds; the dynamo export takes far longer)."""
    _, model = load_student(run_dir)
    path = run_dir.root.parent / "student.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return path


def test_layers_kept_in_float_hold_a_tight_max_drop(tmp_path):
    import onnx

    run_dir = outlier_run(tmp_path, FIRST)
    (record,) = export_run(run_dir.root, ["onnx"], ["int8"], calib=8, onnx=fp32_onnx(run_dir), max_drop=1.0).records
    assert record.reference_accuracy == 1.0 and record.accuracy >= 0.99
    q = record.quantization
    assert [t["calibrator"] for t in q["tried"][:3]] == ["minmax", "entropy", "percentile"]
    calibrators = [t for t in q["tried"][:3] if t["drop_points"] is not None]  # percentile may fail on a graph
    assert calibrators[0]["calibrator"] == "minmax" and len(calibrators) >= 2
    assert all(t["drop_points"] > 1.0 for t in calibrators)  # no calibrator alone holds the bound
    assert q["kept_layers"] and len(q["kept_layers"]) <= 3 and q["drop_points"] <= 1.0 and q["max_drop"] == 1.0
    assert json.loads((run_dir.root / "export.json").read_text())["engines"][0]["quantization"] == q

    graph = onnx.load(str(run_dir.root / record.path)).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    initializers = {t.name for t in graph.initializer}
    # conv1.0 (BatchNorm conv1.1 folded in) writes the outlier tensor, conv1.3 reads it: one of them ranks first
    first = next(node for node in convs[:2] if node.name == q["kept_layers"][0])
    assert first.input[1] in initializers  # and reads its float weights
    assert sum(node.input[1].endswith("_DequantizeLinear_Output") for node in convs) >= len(convs) - 3
    assert q["scheme"] == cpu_scheme().to_json()  # the bounded search quantises in the host's fast scheme
    signed = [t for t in graph.initializer if t.name.endswith("_zero_point") and t.data_type == onnx.TensorProto.INT8]
    assert signed and not any(onnx.numpy_helper.to_array(t).any() for t in signed)  # int8 weights stay symmetric


def test_int8_is_refused_with_the_measured_drop_when_the_bound_cannot_hold(tmp_path):
    run_dir = outlier_run(tmp_path, EVERYWHERE)
    result = export_run(run_dir.root, ["onnx"], ["fp32", "int8"], calib=8, onnx=fp32_onnx(run_dir), max_drop=1.0)
    (refusal,) = result.refused
    message = refusal.reason
    assert refusal.precision == "int8" and "--max-drop 1: onnxruntime INT8 cannot hold it" in message
    drop = float(re.search(r"best of \d+ tries \(\w+ calibration, \d+ layers kept in float\) is ([\d.]+) points",
                           message).group(1))
    assert drop > 1.0 or re.search(r"failing: (cosine|top-1 agreement)", message)  # what broke, with numbers
    engines = json.loads((run_dir.root / "export.json").read_text())["engines"]
    assert [(e["precision"], e["quantization"]) for e in engines] == [("fp32", None)]  # fp32 still recorded
    assert not (run_dir.root / "engines" / "onnx" / "model-int8.onnx").exists()
    assert sorted(p.name for p in (run_dir.root / "engines" / "onnx").iterdir()) == ["model-fp32.onnx"]


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_max_drop_is_one_line(tiny_run, value):
    one_line_error(run(["export", str(tiny_run.root), "--precision", "int8", "--max-drop", value]), "--max-drop")


def test_without_max_drop_int8_is_one_minmax_calibration(shared_run):
    (record,) = export_run(shared_run.root, ["onnx"], ["int8"], calib=8, onnx=fp32_onnx(shared_run)).records
    assert record.quantization == {"calibrator": "minmax", "kept_layers": [], "max_drop": None,
                                   "scheme": cpu_scheme().to_json()}
    assert np.isfinite(record.accuracy)


def test_compress_rejects_a_bad_max_drop_before_training(tiny_data, tmp_path):
    result = run(tiny_args(tiny_data, tmp_path / "run", "--format", "onnx", "--precision", "int8", "--max-drop", "-2"))
    one_line_error(result, "--max-drop -2")
    assert not (tmp_path / "run").exists()
