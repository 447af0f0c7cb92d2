"""The one inference-engine interface every backend implements (DESIGN.md §House style 7).

Input convention: an engine takes the *normalised* NCHW float batch, exactly what the
exported ONNX model takes: images scaled to [0, 1], then `(x - mean) / std` with the
student card's mean/std. `InputSpec.mean/std` carry those values (from the ONNX metadata,
the OpenVINO runtime info or the card) and `preprocess()` applies them, so a device that
has only numpy and its runtime can feed raw images. Timing is not in `infer`:
`edgeft.runtime.profile` measures any engine from outside.
"""
from __future__ import annotations

import abc
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeft.errors import EdgeftError

log = logging.getLogger(__name__)

# ONNX / OpenVINO element type names → numpy dtypes.
DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8", "i32": "int32", "i64": "int64",
}


@dataclass(frozen=True)
class InputSpec:
    """The image input of an engine; `None` in `shape` is a dynamic axis (the batch)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    max_batch: int | None = None  # an upper bound a backend knows (e.g. a TensorRT profile)

    @property
    def dynamic_batch(self) -> bool:
        return not self.shape or self.shape[0] is None

    def accepts(self, batch: int) -> bool:
        """Whether a batch of this size can be fed."""
        if self.dynamic_batch:
            return self.max_batch is None or batch <= self.max_batch
        return batch == self.shape[0]

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """The concrete input shape for `batch` images (other dynamic axes fail)."""
        rest = self.shape[1:]
        if any(d is None for d in rest):
            raise EdgeftError(f"input {self.name!r} has dynamic spatial axes {self.shape}; export a static image size")
        if not self.accepts(batch):
            raise EdgeftError(f"--batch {batch}: this engine takes batch {self.shape[0]} only (static batch axis)")
        return (batch, *rest)

    def example(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A random normalised batch (standard normal) of the right shape and dtype."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal(self.batch_shape(batch)).astype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None}


def preprocess(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 NHWC (or float [0, 1] NCHW) images → the engine's normalised NCHW input."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
        if x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=spec.dtype)


@dataclass(frozen=True)
class EngineOptions:
    """How to open an engine: CPU threads, device, and the precision of an on-device build."""

    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str | None = None  # TensorRT builds from ONNX: fp32 | fp16 | int8
    extra: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """A loaded model: `with engine: y = engine.infer(x)`; `input_spec` says what x is.

    Subclasses set `format` (the engine format they run: the one place that pairs a format with
    its backend), `suffixes` (files they open), `module` (the Python package they need)
    and `install` (the pip requirement that provides it, printed literally in the error).
    """

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""  # the engine format it runs (an exporter's name; torch: the student itself)
    suffixes: ClassVar[tuple[str, ...]] = ()
    module: ClassVar[str] = ""
    install: ClassVar[str] = ""
    layer_profiler: ClassVar[str] = ""  # what per-layer times come from

    def __init__(self, path: str | Path, options: EngineOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or EngineOptions()
        self._open = False

    @classmethod
    def available(cls) -> bool:
        """Whether this backend's runtime can be imported here."""
        return importlib.util.find_spec(cls.module) is not None

    @classmethod
    def require(cls) -> Any:
        """Imports the backend's runtime or fails with the install command."""
        if not cls.available():
            raise EdgeftError(f"{cls.module} is not installed: pip install '{cls.install}'")
        return importlib.import_module(cls.module)

    def __enter__(self) -> "Engine":
        self.open()
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Loads (or builds) the model; called by `__enter__`."""

    def close(self) -> None:
        """Frees what `open` took."""

    @property
    @abc.abstractmethod
    def input_spec(self) -> InputSpec:
        """The image input."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Runs one batch (already checked and cast) and returns the first output."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised NCHW batch → first output (logits), as a numpy array."""
        if not self._open:
            raise EdgeftError(f"{self.path}: engine is not open; use `with runtime.load(path) as engine:`")
        spec = self.input_spec
        batch = np.ascontiguousarray(batch, dtype=spec.dtype)
        if batch.ndim != len(spec.shape) or any(d is not None and d != b for d, b in zip(spec.shape[1:], batch.shape[1:])):
            raise EdgeftError(f"{self.path}: input shape {tuple(batch.shape)} does not match {spec.shape}")
        return self.run(batch)

    def layer_times(self, batch: np.ndarray, runs: int) -> list[dict] | None:
        """Median per-layer times [{name, op, ms}] over `runs` runs, from the backend's own profiler."""
        return None

    def info(self) -> dict[str, Any]:
        """Backend name, version and the device it runs on (for reproducible records)."""
        module = self.require()
        return {"backend": self.name, "version": getattr(module, "__version__", "unknown")}

    def precision(self) -> str | None:
        """The engine's numeric precision when the file says it (metadata or name), else None."""
        return precision_from_name(self.path)


def card_from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """The student-card fields (mean, std, precision, …) stored as ONNX/IR metadata.

    Accepts one JSON value per key ("mean": "[0.5, …]") and a whole card under
    "edgeft.card" / "card"; unknown keys are ignored.
    """
    fields: dict[str, Any] = {}
    for key in ("edgeft.card", "card", "student_card"):
        if key in meta:
            try:
                fields.update(json.loads(meta[key]))
            except json.JSONDecodeError:
                log.warning("metadata %r is not JSON; ignored", key)
    for key, value in meta.items():
        short = key.split(".")[-1]
        if short in ("mean", "std", "input_size", "precision", "class_names", "arch"):
            try:
                fields[short] = json.loads(value)
            except json.JSONDecodeError:
                fields[short] = value
    return fields


def as_floats(value: Any) -> tuple[float, ...] | None:
    """A metadata list of numbers as a float tuple (None when absent)."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) and value else None


def precision_from_name(path: Path) -> str | None:
    """fp32/fp16/int8 from an engine file name such as model-fp16.onnx (edgeft export's layout)."""
    for precision in ("fp32", "fp16", "int8"):
        if precision in path.stem.lower().replace("_", "-").split("-"):
            return precision
    return None


def median_by_layer(runs: list[list[tuple[str, str, float]]]) -> list[dict]:
    """Per-run (name, op, ms) lists → one median ms per layer, in first-seen order."""
    order: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    for run in runs:
        for name, op, ms in run:
            order.setdefault(name, op)
            times.setdefault(name, []).append(ms)
    return [{"name": n, "op": op, "ms": float(np.median(times[n]))} for n, op in order.items()]
