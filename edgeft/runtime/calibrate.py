"""Host calibration of the estimator: measure small synthetic networks, fit efficiency and overhead.

The networks are built with onnx.helper (no torch, random weights) to span the regimes
that matter — dense 3x3 convolutions (compute bound), depthwise blocks (memory bound),
many tiny layers (overhead bound) and wide 1x1 layers (weight traffic) — so a model
estimated afterwards was never part of the fit.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeft import artifacts
from edgeft.errors import ConfigError
from edgeft.runtime import EngineOptions, load
from edgeft.runtime.profile import time_loop
from edgeft.targets.estimate import Calibration, Point, cache_path, fit, roofline_ms
from edgeft.targets.graph import graph_costs
from edgeft.targets.host import host_target

log = logging.getLogger(__name__)

# name → (image size, layers: (out channels, kernel, stride, kind)); kind: conv | dw (depthwise) | norm
NETWORKS = {
    "dense": (112, [(32, 3, 2, "conv"), (64, 3, 1, "conv"), (64, 3, 1, "conv"), (128, 3, 2, "conv"),
                    (128, 3, 1, "conv"), (256, 3, 2, "conv"), (256, 3, 1, "conv")]),
    "depthwise": (112, [(32, 3, 2, "conv")] + [layer for c, s in ((64, 1), (96, 2), (96, 1), (160, 2), (160, 1))
                                               for layer in ((c, 3, s, "dw"), (c, 1, 1, "conv"))]),
    "small-deep": (16, [(16, 3, 1, "conv")] * 24),
    "wide-1x1": (14, [(512, 1, 1, "conv")] * 6),
    "normalised": (112, [(64, 3, 2, "conv")] + [(64, 1, 1, kind) for _ in range(4) for kind in ("norm", "conv")]),
}
CALIBRATABLE = ("onnxruntime", "openvino")


def synthetic_model(path: Path, image_size: int, layers: list[tuple[int, int, int, str]], seed: int = 0) -> Path:
    """A stack of Conv(+ReLU) / depthwise / InstanceNorm layers → global pool → linear head, as ONNX (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x, channels = [], [], "input", 3
    for i, (out, kernel, stride, kind) in enumerate(layers):
        out = channels if kind in ("dw", "norm") else out
        if kind == "norm":
            inits += [numpy_helper.from_array(np.ones(out, np.float32), f"s{i}"),
                      numpy_helper.from_array(np.zeros(out, np.float32), f"b{i}")]
            nodes.append(helper.make_node("InstanceNormalization", [x, f"s{i}", f"b{i}"], [f"r{i}"]))
            x = f"r{i}"
            continue
        w = rng.standard_normal((out, 1 if kind == "dw" else channels, kernel, kernel)).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[kernel, kernel],
                                   strides=[stride, stride], pads=[kernel // 2] * 4, group=out if kind == "dw" else 1),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, channels = f"r{i}", out
    head = rng.standard_normal((channels, 10)).astype(np.float32) * 0.1
    inits.append(numpy_helper.from_array(head, "head"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "edgeft-calibration", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def measure_ms(path: Path, backend: str, threads: int | None, seconds: float = 0.3) -> float:
    """Median batch-1 latency of one model (short loop: calibration, not a benchmark)."""
    with load(path, backend, EngineOptions(threads=threads, device="cpu")) as engine:
        return float(np.median(time_loop(engine, engine.input_spec.example(1), 3, 10, seconds)))


def host_points(backend: str = "onnxruntime", threads: int | None = None) -> list[Point]:
    """(roofline, kernels, measured ms) of every synthetic network with `backend` on this host."""
    if backend not in CALIBRATABLE:
        raise ConfigError(f"--backend {backend}: host calibration runs ONNX models; choose {', '.join(CALIBRATABLE)}")
    target = host_target(threads)
    points = []
    with tempfile.TemporaryDirectory(prefix="edgeft-calib-") as tmp:
        for name, (size, layers) in NETWORKS.items():
            path = synthetic_model(Path(tmp) / f"{name}.onnx", size, layers)
            costs = graph_costs(path)
            measured = measure_ms(path, backend, threads)
            log.info("calibration %s: %.3f ms", name, measured)
            points.append((roofline_ms(costs, target, "fp32", 1), sum(c.kernel for c in costs), measured))
    return points


def calibrate_host(backend: str = "onnxruntime", threads: int | None = None, save: bool = True) -> Calibration:
    """Fits (efficiency, overhead) of `backend` at fp32 on this machine; caches it for estimates."""
    points = host_points(backend, threads)
    cal = fit(points, "host-measured", f"{backend} on {host_target(threads).title}, {len(points)} synthetic networks "
                                       f"({', '.join(NETWORKS)})")
    if save:
        path = cache_path()
        entries = artifacts.read_json(path) if path.exists() else {}
        entries[f"{backend}/fp32/{threads}"] = asdict(cal)
        artifacts.write_json(path, entries)
    return cal
