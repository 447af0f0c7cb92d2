"""The target registry (data with sources), graph costs, calibration and labelled estimates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import ConfigError
from edgeft.runtime.calibrate import synthetic_model
from edgeft.targets import TARGETS, get_target, target_from_yaml
from edgeft.targets.estimate import Calibration, calibration_for, estimate, fit, host_calibration, roofline_ms
from edgeft.targets.graph import graph_costs
from edgeft.targets.host import host_target

ISSUE_TARGETS = ("jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "jetson-xavier-nx",
                 "raspberry-pi-5", "intel-core-ultra-7-155h", "intel-core-ultra-7-155h-npu", "host")


def test_registry_has_the_devices_with_sources_for_every_figure() -> None:
    assert set(ISSUE_TARGETS) <= set(TARGETS.names()) and len(TARGETS.names()) >= 8
    for name in TARGETS.names():
        target = get_target(name)
        assert target.backends and target.precisions
        if target.measured:
            continue
        figures = [*target.peak.values(), target.memory_bandwidth, target.ram]
        assert all(f is not None and f.value > 0 and len(f.source) > 10 for f in figures), name
        assert target.references, name


@pytest.mark.parametrize("alias, name", [("jetson", "jetson-orin-nano-8gb"), ("pi5", "raspberry-pi-5"),
                                         ("intel-npu", "intel-core-ultra-7-155h-npu"), ("local", "host")])
def test_aliases(alias: str, name: str) -> None:
    assert get_target(alias).name == name


def test_unknown_target_suggests_names() -> None:
    with pytest.raises(ConfigError, match="did you mean 'jetson'"):
        get_target("jetsn")


def test_malformed_device_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntitle: y\nkind: cpu\nbackends: [onnxruntime]\nprecisions: [fp32]\n"
                   "peak: {fp32: {value: 1}}\n")
    with pytest.raises(ConfigError, match="bad.yaml: peak.fp32"):
        target_from_yaml(bad)


def test_graph_costs_count_convolution_flops(tmp_path: Path) -> None:
    path = synthetic_model(tmp_path / "m.onnx", 16, [(8, 3, 2, "conv"), (8, 3, 1, "dw")])
    layers = graph_costs(path)
    ops = [layer.op for layer in layers]
    assert ops == ["Conv", "Conv", "GlobalAveragePool", "MatMul"]  # ReLU fused, Flatten free
    conv1, dwconv = layers[0], layers[1]
    assert conv1.flops == 2 * (8 * 8 * 8) * (3 * 3 * 3)  # 8x8 output, 8 channels, 3x3x3 kernel
    assert dwconv.flops == 2 * (8 * 8 * 8) * 9  # depthwise: one 3x3 per channel
    assert conv1.weights == 8 * 3 * 3 * 3 + 8 and conv1.activations == 3 * 16 * 16 + 8 * 8 * 8


def test_normalisation_layers_are_memory_kernels(tmp_path: Path) -> None:
    path = synthetic_model(tmp_path / "m.onnx", 16, [(8, 3, 1, "conv"), (8, 1, 1, "norm")])
    norm = next(layer for layer in graph_costs(path) if layer.op == "InstanceNormalization")
    assert norm.flops == 8 * 16 * 16 and norm.activations == 2 * 8 * 16 * 16 and norm.weights == 16


def test_fit_recovers_known_efficiency_and_overhead() -> None:
    rng = np.random.default_rng(0)
    points = []
    for _ in range(3):
        compute, memory = rng.uniform(0.01, 1, 20), rng.uniform(0.001, 0.1, 20)
        kernels = int(rng.integers(10, 100))
        measured = float(np.maximum(compute / 0.4, memory / 0.4).sum() + kernels * 0.01)
        points.append(((compute, memory), kernels, measured))
    cal = fit(points, "test", "synthetic")
    assert cal.efficiency == pytest.approx(0.4, rel=0.1) and cal.overhead_ms == pytest.approx(0.01, rel=0.25)
    assert cal.fit_error < 0.02


def test_jetson_estimate_is_labelled_and_calibrated_on_public_anchors(tmp_path: Path) -> None:
    path = synthetic_model(tmp_path / "m.onnx", 64, [(32, 3, 2, "conv"), (64, 3, 1, "conv")])
    record = estimate(path, "jetson")
    assert record["label"] == "estimated" and record["target"] == "jetson-orin-nano-8gb"
    assert record["backend"] == "tensorrt" and record["precision"] == "fp16"
    assert record["calibration"]["label"] == "anchors" and "netspresso" in record["calibration"]["source"]
    assert record["calibration"]["fit_error"] < 0.2
    assert record["latency_ms"]["p50"] > 0 and record["throughput"]["best"]["images_per_s"] > 0
    agx = estimate(path, "jetson-agx-orin-64gb")
    assert agx["latency_ms"]["p50"] < record["latency_ms"]["p50"]  # the bigger module is faster


def test_targets_without_anchors_say_how_they_are_calibrated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path))
    assert calibration_for(get_target("orin-nx"), "tensorrt", "fp16").label == "interpolated"
    assert calibration_for(get_target("xavier-nx"), "tensorrt", "fp16").label == "interpolated"
    assert calibration_for(get_target("intel-npu"), "openvino", "int8").label == "uncalibrated"
    assert calibration_for(get_target("intel-cpu"), "openvino", "fp32").label == "uncalibrated"
    assert calibration_for(get_target("pi5"), "onnxruntime", "int8").label == "transferred"


def test_host_calibration_is_cached_and_used_for_intel_cpu(tmp_path: Path, monkeypatch) -> None:
    import edgeft.runtime.calibrate as calibrate

    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "NETWORKS", {"a": (16, [(8, 3, 1, "conv")] * 2), "b": (16, [(16, 1, 1, "conv")] * 6),
                                                "c": (32, [(8, 3, 2, "conv"), (8, 3, 1, "dw")])})
    cal = calibrate.calibrate_host("onnxruntime", threads=1)
    assert isinstance(cal, Calibration) and cal.label == "host-measured" and 0 < cal.efficiency <= 1
    assert host_calibration("onnxruntime", "fp32", 1) == cal
    assert calibration_for(get_target("intel-cpu"), "onnxruntime", "fp32").label == "host-measured"
    with pytest.raises(ConfigError, match="--backend torch"):
        calibrate.calibrate_host("torch")


def test_host_target_figures_are_measured_or_derived(tmp_path: Path) -> None:
    host = host_target(1)
    assert host.peak["fp32"].value > 0 and host.peak["fp32"].source.startswith("derived")
    assert host.memory_bandwidth.value > 0 and host.memory_bandwidth.source.startswith("measured")
    layers = graph_costs(synthetic_model(tmp_path / "m.onnx", 8, [(4, 3, 1, "conv")]))
    compute, memory = roofline_ms(layers, host, "fp32", 2)
    assert compute.shape == memory.shape == (len(layers),) and (compute > 0).all() and (memory > 0).all()
