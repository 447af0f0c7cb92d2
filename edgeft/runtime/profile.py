"""Latency profiling of any engine: warm-up, timed runs, percentiles, batch sweep, memory, layers.

What a figure covers (ECOSYSTEM.md pain point 8): `engine.infer` on a prepared,
normalised batch — host↔device copies included, image decoding and preprocessing not.
Timed runs continue until both `iterations` runs and `seconds` have passed; every raw
sample is kept in the record.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import ConfigError
from edgeft.figures import sweep_row, throughput_json
from edgeft.runtime import Engine, EngineOptions, load
from edgeft.runtime.base import InputSpec, preprocess

COVERS = "engine.infer on a prepared normalised batch (host-device copies included; no decoding/preprocessing)"
PREPROCESS_COVERS = "uint8 HWC images → normalised NCHW input (numpy); JPEG decoding and resizing not included"
SWEEP_GAIN = 1.05  # a batch size must raise throughput by 5 % to count as an improvement


@dataclass(frozen=True)
class ProfileConfig:
    """How to measure (the `edgeft profile` flags)."""

    batch: int = 1
    warmup: int = 10
    iterations: int = 50
    seconds: float = 2.0
    threads: int | None = None
    sweep: bool = True
    max_batch: int = 64
    layers: bool = True
    layer_runs: int = 10
    points: tuple[int, ...] = ()  # exact sweep batches: a dynamic engine's profile (min, opt, max)

    def check(self) -> None:
        for flag, value in (("--batch", self.batch), ("--iterations", self.iterations), ("--max-batch", self.max_batch)):
            if value < 1:
                raise ConfigError(f"{flag} {value}: must be >= 1")
        if self.warmup < 0 or self.seconds < 0:
            raise ConfigError("--warmup and --seconds must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be >= 1")


class MemoryMeter:
    """Peak resident memory of this process while the block runs, read from the kernel.

    Linux keeps the peak itself (VmHWM in /proc/self/status); entering the block resets it
    (`5` to /proc/self/clear_refs), leaving it reads it. No sampling thread: one that woke
    every 2 ms made a 2-thread ONNX Runtime model 1.6–1.75× slower on a 2-core host
    (mobilenetv3_small_100, runs alternated with the thread paused), since the runtime's
    workers wait for each other. Where the peak cannot be reset (not Linux), it is the
    process's lifetime peak (ru_maxrss), which can include what ran before.
    """

    def __init__(self) -> None:
        self.before = self.peak = _rss_bytes()
        self.method = "ru_maxrss (the process's lifetime peak)"

    def __enter__(self) -> "MemoryMeter":
        self.before = _rss_bytes()
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
            self.method = "kernel peak resident set size (VmHWM), reset at the start"
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(_peak_bytes(), _rss_bytes())

    def to_json(self) -> dict[str, Any]:
        mb = 2**20
        return {"rss_before_mb": round(self.before / mb, 1), "peak_rss_mb": round(self.peak / mb, 1),
                "peak_increase_mb": round((self.peak - self.before) / mb, 1), "method": self.method}


_PROC_STATM = Path("/proc/self/statm")
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_bytes() -> int:
    if _PROC_STATM.exists():
        return int(_PROC_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return _maxrss_bytes()


def _peak_bytes() -> int:
    try:
        line = next(line for line in _PROC_STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)


def time_loop(engine: Engine, batch: np.ndarray, warmup: int, iterations: int, seconds: float) -> list[float]:
    """Latencies in ms of runs after `warmup`, until >= `iterations` runs and >= `seconds`."""
    for _ in range(warmup):
        engine.infer(batch)
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        engine.infer(batch)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def preprocess_time(spec: InputSpec, batch: int, runs: int = 20) -> dict[str, Any]:
    """Latency of `preprocess` (uint8 HWC images → the normalised input batch), ms, on this machine."""
    _, channels, height, width = spec.batch_shape(batch)
    images = np.random.default_rng(0).integers(0, 256, (batch, height, width, channels), dtype=np.uint8)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        preprocess(images, spec)
        samples.append((time.perf_counter() - start) * 1e3)
    return {**stats(samples), "covers": PREPROCESS_COVERS}


def stats(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99, mean, std, min, max of latency samples (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {k: round(float(v), 4) for k, v in
            {"p50": p50, "p90": p90, "p99": p99, "mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max()}.items()}


def batch_sweep(engine: Engine, cfg: ProfileConfig) -> list[dict]:
    """Latency and throughput per batch size.

    Exactly `cfg.points` when given (a dynamic engine's optimisation profile, each point
    measured); a static engine's one batch; else batch 1, 2, 4, … until throughput stops
    improving (or the engine refuses the size).
    """
    spec = engine.input_spec
    if cfg.points:
        return [_sweep_row(engine, size, cfg) for size in cfg.points if spec.accepts(size)]
    if not spec.dynamic_batch:
        return [_sweep_row(engine, spec.shape[0], cfg)]
    rows, best, size = [], 0.0, 1
    while size <= cfg.max_batch and spec.accepts(size):
        rows.append(_sweep_row(engine, size, cfg))
        if rows[-1]["images_per_s"] < best * SWEEP_GAIN:
            break
        best = max(best, rows[-1]["images_per_s"])
        size *= 2
    return rows


def _sweep_row(engine: Engine, size: int, cfg: ProfileConfig) -> dict:
    samples = time_loop(engine, engine.input_spec.example(size), 2, max(5, cfg.iterations // 5), cfg.seconds / 4)
    p50, p99 = (float(v) for v in np.percentile(samples, [50, 99]))
    return sweep_row(size, p50, latency_ms_p99=round(p99, 4))


def profile_engine(path: str | Path, backend: str | None = None, cfg: ProfileConfig = ProfileConfig(),
                   device: str = "auto", precision: str | None = None) -> dict[str, Any]:
    """Measures one engine on this machine; returns the JSON record (label 'measured').

    `precision` is what an on-device build uses (TensorRT from ONNX) or OpenVINO's CPU
    inference precision; engines with a fixed precision ignore it.
    """
    cfg.check()
    with MemoryMeter() as memory:
        began = time.perf_counter()
        engine = load(path, backend, EngineOptions(threads=cfg.threads, device=device, precision=precision))
        with engine:
            measured = _measure(engine, cfg, began, precision)
    return _record(path, engine, cfg, measured, memory)


@dataclass
class _Measured:
    """What `_measure` timed on a loaded engine."""

    load_ms: float
    first_inference_ms: float
    samples: list[float]
    sweep: list[dict]
    layers: Any
    runtime: dict[str, Any]
    precision: str | None


def _measure(engine: Engine, cfg: ProfileConfig, began: float, precision: str | None) -> _Measured:
    """Load time (since `began`), first run, timed runs, batch sweep and layer times of a loaded engine."""
    loaded = time.perf_counter()
    x = engine.input_spec.example(cfg.batch)
    engine.infer(x)
    first = time.perf_counter()
    samples = time_loop(engine, x, cfg.warmup, cfg.iterations, cfg.seconds)
    sweep = batch_sweep(engine, cfg) if cfg.sweep else []
    layers = engine.layer_times(x, cfg.layer_runs) if cfg.layers else None
    return _Measured(round((loaded - began) * 1e3, 3), round((first - loaded) * 1e3, 3), samples, sweep, layers,
                     engine.info(), engine.precision() or precision)


def _record(path: str | Path, engine: Engine, cfg: ProfileConfig, measured: _Measured,
            memory: MemoryMeter) -> dict[str, Any]:
    """The profile record of one engine (label 'measured'), every raw sample included."""
    spec, latency = engine.input_spec, stats(measured.samples)
    throughput = throughput_json(cfg.batch, latency["p50"], measured.sweep)  # edgeft.figures: the one definition
    return {
        "label": "measured",
        "engine": str(path),
        "backend": engine.name,
        "precision": measured.precision,
        "input": {**spec.to_json(), "batch": cfg.batch},
        "config": asdict(cfg),
        "covers": COVERS,
        "load_ms": measured.load_ms,
        "first_inference_ms": measured.first_inference_ms,
        "preprocess_ms": preprocess_time(spec, cfg.batch) if len(spec.shape) == 4 else None,
        "latency_ms": latency,
        "iterations": len(measured.samples),
        "throughput": throughput,
        "memory": memory.to_json(),
        "layers": measured.layers,
        "layer_profiler": engine.layer_profiler if measured.layers is not None else None,
        "runtime": measured.runtime,
        "host": host_info(),
        "samples_ms": [round(s, 4) for s in measured.samples],
    }


def host_info() -> dict[str, Any]:
    """This machine: CPU model, cores, OS, Python and numpy versions."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "hostname": platform.node()}
