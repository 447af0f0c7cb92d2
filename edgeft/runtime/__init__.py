"""Inference engines behind one interface, and `load(path)` that picks the backend.

No module here imports torch at import time (the torch backend does so inside its
methods): an edge device runs `edgeft.runtime` with numpy and its own runtime only.
"""
from __future__ import annotations

from pathlib import Path

from edgeft.errors import EdgeftError
from edgeft.registry import Registry
from edgeft.runtime.base import Engine, EngineOptions, InputSpec, preprocess
from edgeft.runtime.fingerprint import check_engine
from edgeft.runtime.onnxrt import OrtEngine
from edgeft.runtime.openvino import OpenVinoEngine
from edgeft.runtime.pytorch import TorchEngine
from edgeft.runtime.tensorrt import TensorRtEngine
from edgeft.targets import Target

BACKENDS: Registry[type[Engine]] = Registry("backend")
BACKENDS.add("onnxruntime", OrtEngine, aliases=("ort", "onnx"))
BACKENDS.add("openvino", OpenVinoEngine, aliases=("ov",))
BACKENDS.add("tensorrt", TensorRtEngine, aliases=("trt",))
BACKENDS.add("torch", TorchEngine, aliases=("pytorch",))

# What each backend can open besides its own files (ONNX is read by OpenVINO, built by TensorRT).
ALSO_OPENS = {"openvino": (".onnx",), "tensorrt": (".onnx",)}
# Each backend declares the format it runs (Engine.format); the format → backend pairs are read off them.
FORMAT_BACKEND = {BACKENDS.get(name).format: name for name in BACKENDS}
REFERENCE_FORMAT = "torch"  # the PyTorch student: profiled as the reference, never exported

__all__ = ["BACKENDS", "FORMAT_BACKEND", "REFERENCE_FORMAT", "Engine", "EngineOptions", "InputSpec", "backend_for",
           "format_of", "load", "preprocess", "target_formats"]


def format_of(backend: str) -> str:
    """The engine format a backend (name or alias) runs."""
    return BACKENDS.get(backend).format


def target_formats(target: Target) -> list[str]:
    """The formats to export for a target: those its backends run, in its order of preference."""
    formats = (format_of(b) for b in target.backends if b in BACKENDS)
    return [f for f in dict.fromkeys(formats) if f != REFERENCE_FORMAT]


def backend_for(path: str | Path) -> str:
    """The backend that opens `path` by its file type (a directory is a run: torch)."""
    path = Path(path)
    if path.is_dir():
        return "torch"
    for name in BACKENDS:
        if path.suffix.lower() in BACKENDS.get(name).suffixes:
            return name
    known = sorted({s for n in BACKENDS for s in BACKENDS.get(n).suffixes})
    raise EdgeftError(f"{path}: unknown engine type {path.suffix!r}; expected one of {', '.join(known)} or a run directory")


def load(path: str | Path, backend: str | None = None, options: EngineOptions | None = None) -> Engine:
    """An (unopened) engine for `path`: `with load(p) as engine: engine.infer(x)`.

    An engine recorded in a run's export manifest whose fingerprint does not fit this machine is refused
    with the command that rebuilds it (edgeft.runtime.fingerprint).
    """
    path = Path(path)
    if not path.exists():
        raise EdgeftError(f"{path}: file not found")
    name = BACKENDS.canonical(backend) if backend else backend_for(path)
    cls = BACKENDS.get(name)
    opens = cls.suffixes + ALSO_OPENS.get(name, ())
    if name != "torch" and path.suffix.lower() not in opens:
        raise EdgeftError(f"--backend {name}: cannot open {path.name}; it takes {', '.join(opens)} files")
    if not cls.available():
        raise EdgeftError(f"--backend {name}: {cls.module} is not installed: pip install '{cls.install}'")
    if path.is_file():
        check_engine(path, name)
    return cls(path, options)
