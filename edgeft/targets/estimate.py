"""Latency estimates for devices out of reach: a roofline over the ONNX graph, calibrated.

Per layer, FLOPs and bytes moved come from the ONNX graph after shape inference; its time
is `max(FLOPs / peak, bytes / bandwidth) / efficiency + overhead` against the target's
peak figures. The two free numbers — the efficiency reached and a per-kernel overhead
(launches, dispatch; why MobileNets are not 6x faster than ResNet-18 on a Jetson at batch 1,
ECOSYSTEM.md) — are fitted per target and backend to public anchors (the target's YAML),
borrowed from similar targets, or measured on this host (`edgeft.runtime.calibrate`).
Every record says `label: estimated` and where its calibration came from.
"""
from __future__ import annotations

import json
import math
import os
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import ConfigError, EdgeftError
from edgeft.figures import sweep_row, throughput_json
from edgeft.targets import Target, get_target
from edgeft.targets.graph import LayerCost, graph_costs

ANCHOR_MODELS = Path(__file__).resolve().parent / "anchor_models.json"
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
DEFAULT_EFFICIENCY, DEFAULT_OVERHEAD_MS = 0.3, 0.02
SWEEP_GAIN, MAX_SWEEP_BATCH = 1.05, 64


@dataclass(frozen=True)
class Calibration:
    """Fractions of peak compute and bandwidth reached, and per-kernel overhead (ms), with provenance.

    `memory_efficiency` may exceed 1 on CPUs whose caches hold the activations; it is fitted
    separately only when there are more measurements than parameters.
    """

    efficiency: float
    overhead_ms: float
    label: str  # anchors | transferred | interpolated | host-measured | uncalibrated
    source: str
    fit_error: float | None = None  # mean |pred - measured| / measured over the fitted points
    memory_efficiency: float | None = None  # None: the same as `efficiency`

    @property
    def mem(self) -> float:
        return self.memory_efficiency or self.efficiency


UNCALIBRATED = Calibration(DEFAULT_EFFICIENCY, DEFAULT_OVERHEAD_MS, "uncalibrated",
                           "no public anchor or host measurement: default efficiency 0.3, 0.02 ms per kernel")


def cache_path() -> Path:
    """Where host calibrations are kept (EDGEFT_CACHE or ~/.cache/edgeft)."""
    root = os.environ.get("EDGEFT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeft"
    return Path(root) / "host-calibration.json"


def roofline_ms(layers: list[LayerCost], target: Target, precision: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (compute, memory) time at full peak (ms)."""
    peak = target.peak_ops(precision)
    if target.memory_bandwidth is None:
        raise EdgeftError(f"target {target.name} has no memory bandwidth figure")
    bandwidth = target.memory_bandwidth.value * 1e9
    size = BYTES.get(precision, 4)
    flops = np.array([c.flops for c in layers]) * batch
    moved = (np.array([c.activations for c in layers]) * batch + np.array([c.weights for c in layers])) * size
    return flops / peak * 1e3, moved / bandwidth * 1e3


Point = tuple[tuple[np.ndarray, np.ndarray], int, float]  # (roofline arrays, kernels, measured ms)


def fit(points: list[Point], label: str, source: str) -> Calibration:
    """Least log-error grid fit of (efficiency[, memory efficiency], overhead) to measured latencies."""
    if not points:
        raise EdgeftError("no measurements to calibrate on")
    measured = np.array([p[2] for p in points])
    kernels = np.array([p[1] for p in points], dtype=np.float64)
    eff = np.logspace(-3, 0, 241)
    over = np.concatenate([[0.0], np.logspace(-4, 0.7, 283)])
    mems = np.logspace(-2, 1, 61) if len(points) > 3 else [None]
    best = (np.inf, 0.0, 0.0, None)
    for mem in mems:
        mem_eff = eff[:, None] if mem is None else mem
        # shape (efficiency, point): max(compute / e, memory / mem) summed over layers
        roof = np.stack([np.maximum(c[None, :] / eff[:, None], m[None, :] / mem_eff).sum(axis=1)
                         for (c, m), _, _ in points], axis=1)
        pred = roof[:, None, :] + over[None, :, None] * kernels
        loss = np.mean(np.log(pred / measured) ** 2, axis=2)
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        if loss[i, j] < best[0]:
            best = (loss[i, j], eff[i], over[j], mem)
    _, e, o, mem = best
    cal = Calibration(round(float(e), 5), round(float(o), 6), label, source,
                      memory_efficiency=None if mem is None else round(float(mem), 5))
    errors = [abs(_total(rf, k, cal) - t) / t for rf, k, t in points]
    return dataclasses.replace(cal, fit_error=round(float(np.mean(errors)), 4))


def _total(roof: tuple[np.ndarray, np.ndarray], kernels: int, cal: Calibration) -> float:
    compute, memory = roof
    return float(np.maximum(compute / cal.efficiency, memory / cal.mem).sum() + kernels * cal.overhead_ms)


def _anchor_layers() -> dict[str, list[LayerCost]]:
    data = json.loads(ANCHOR_MODELS.read_text())
    return {name: [LayerCost.from_row(r) for r in model["layers"]] for name, model in data["models"].items()}


def anchor_calibration(target: Target, backend: str, precision: str) -> Calibration | None:
    """Fit on the target's public anchors: same backend+precision, else same precision, else any."""
    if not target.anchors:
        return None
    models = _anchor_layers()
    usable = [a for a in target.anchors if a.model in models]
    for pick, how in ((lambda a: a.backend == backend and a.precision == precision, "anchors"),
                      (lambda a: a.precision == precision, "transferred"), (lambda a: True, "transferred")):
        chosen = [a for a in usable if pick(a)]
        if chosen:
            break
    points = [(roofline_ms(models[a.model], target, a.precision, 1), _kernels(models[a.model]), a.latency_ms)
              for a in chosen]
    source = "; ".join(f"{a.model} {a.backend} {a.precision} {a.latency_ms} ms ({a.source})" for a in chosen)
    return fit(points, how, f"fitted to {target.name} anchors: {source}")


def host_calibration(backend: str, precision: str, threads: int | None = None) -> Calibration | None:
    """A calibration measured on this host by `edgeft targets --calibrate`, if cached."""
    path = cache_path()
    if not path.exists():
        return None
    entries = json.loads(path.read_text())
    keys = [f"{backend}/{precision}/{threads}", f"{backend}/fp32/{threads}",
            *sorted(k for k in entries if k.startswith(f"{backend}/"))]
    key = next((k for k in keys if k in entries), None)
    return Calibration(**{**entries[key], "label": "host-measured"}) if key else None


def calibration_for(target: Target, backend: str, precision: str, _seen: tuple[str, ...] = ()) -> Calibration:
    """The calibration an estimate for (target, backend, precision) uses, with its provenance."""
    own = anchor_calibration(target, backend, precision)
    if own is not None:
        return own
    if target.calibrate_like == ("host",) or target.name == "host":
        return host_calibration(backend, precision) or UNCALIBRATED
    borrowed = [calibration_for(get_target(n), backend, precision, _seen + (target.name,))
                for n in target.calibrate_like if n not in _seen]
    borrowed = [c for c in borrowed if c.label != "uncalibrated"]
    if not borrowed:
        return UNCALIBRATED
    eff = math.exp(np.mean([math.log(c.efficiency) for c in borrowed]))
    over = float(np.mean([c.overhead_ms for c in borrowed]))
    mem = math.exp(np.mean([math.log(c.mem) for c in borrowed]))
    return Calibration(round(eff, 5), round(over, 6), "interpolated", memory_efficiency=round(mem, 5),
                       source=f"geometric mean of {', '.join(target.calibrate_like)} calibrations (no anchors of its own)")


def predict(layers: list[LayerCost], target: Target, precision: str, batch: int, cal: Calibration) -> tuple[float, np.ndarray]:
    """Total and per-layer estimated ms."""
    compute, memory = roofline_ms(layers, target, precision, batch)
    per_layer = np.maximum(compute / cal.efficiency, memory / cal.mem) + cal.overhead_ms * _kernel_mask(layers)
    return float(per_layer.sum()), per_layer


def estimate(onnx_path: str | Path, target: Target | str, backend: str | None = None, precision: str | None = None,
             batch: int = 1, calibration: Calibration | None = None) -> dict[str, Any]:
    """An estimated profile record for `onnx_path` on `target` (label 'estimated')."""
    target = get_target(target) if isinstance(target, str) else target
    backend = backend or target.backends[0]
    precision = precision or target.precisions[0]
    if backend not in target.backends:
        raise ConfigError(f"--backend {backend}: target {target.name} runs {', '.join(target.backends)}")
    layers = graph_costs(onnx_path)
    cal = calibration or calibration_for(target, backend, precision)
    total, per_layer = predict(layers, target, precision, batch, cal)
    sweep = _sweep(layers, target, precision, cal)
    order = np.argsort(-per_layer)
    return {
        "label": "estimated",
        "engine": str(onnx_path), "target": target.name, "backend": backend, "precision": precision, "batch": batch,
        "latency_ms": {"p50": round(total, 4)},
        "throughput": throughput_json(batch, round(total, 4), sweep),  # edgeft.figures: the one definition
        "gflops": round(sum(c.flops for c in layers) * batch / 1e9, 4),
        "weights_mb": round(sum(c.weights for c in layers) * BYTES.get(precision, 4) / 2**20, 3),
        "kernels": _kernels(layers),
        "calibration": asdict(cal),
        "peak": {"ops_per_s": target.peak_ops(precision), "bandwidth_gbs": target.memory_bandwidth.value},
        "layers": [{"name": layers[i].name, "op": layers[i].op, "ms": round(float(per_layer[i]), 5)} for i in sorted(order[:50])],
        "covers": "model compute only, from a roofline of the ONNX graph; not a measurement",
        "notes": target.notes,
    }


def _sweep(layers: list[LayerCost], target: Target, precision: str, cal: Calibration) -> list[dict]:
    rows, best, size = [], 0.0, 1
    while size <= MAX_SWEEP_BATCH:
        total, _ = predict(layers, target, precision, size, cal)
        rows.append(sweep_row(size, total))
        ips = rows[-1]["images_per_s"]
        if ips < best * SWEEP_GAIN:
            break
        best, size = max(best, ips), size * 2
    return rows


def _kernel_mask(layers: list[LayerCost]) -> np.ndarray:
    return np.array([1.0 if c.kernel else 0.0 for c in layers])


def _kernels(layers: list[LayerCost]) -> int:
    return int(_kernel_mask(layers).sum())
