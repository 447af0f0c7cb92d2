"""ONNX Runtime backend: CPU execution provider, CUDA/TensorRT providers when present."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.runtime.base import DTYPES, Engine, InputSpec, as_floats, card_from_metadata, median_by_layer
from edgeft.runtime.layers import parse_modules, with_modules


GPU_PROVIDERS = ("CUDAExecutionProvider",)


class OrtEngine(Engine):
    """An ONNX model in an onnxruntime InferenceSession."""

    name = "onnxruntime"
    format = "onnx"
    suffixes = (".onnx",)
    module = "onnxruntime"
    install = "onnxruntime"
    layer_profiler = "onnxruntime session profiling (Node *_kernel_time events)"

    def open(self) -> None:
        self._session = self._new_session(profile_dir=None)
        first = self._session.get_inputs()[0]
        custom = self._session.get_modelmeta().custom_metadata_map
        meta = card_from_metadata(custom)
        self._meta, self._modules = meta, parse_modules(custom)
        shape = tuple(d if isinstance(d, int) else None for d in first.shape)
        self._spec = InputSpec(first.name, shape, DTYPES.get(first.type, "float32"),
                               as_floats(meta.get("mean")), as_floats(meta.get("std")))
        self._output = self._session.get_outputs()[0].name

    def _new_session(self, profile_dir: str | None):
        ort = self.require()
        opts = ort.SessionOptions()
        if self.options.threads:
            opts.intra_op_num_threads = self.options.threads
            opts.inter_op_num_threads = 1
        if profile_dir:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(profile_dir) / "ort")
        try:
            return ort.InferenceSession(str(self.path), opts, providers=self._providers(ort))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise EdgeftError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None

    def _providers(self, ort) -> list[str]:
        available = ort.get_available_providers()
        device = self.options.device
        if device == "cuda" and not any(p in available for p in GPU_PROVIDERS):
            raise EdgeftError("--device cuda: onnxruntime has no CUDA provider here; pip install onnxruntime-gpu")
        wanted = [p for p in GPU_PROVIDERS if p in available] if device in ("auto", "cuda") else []
        return [*wanted, "CPUExecutionProvider"]

    def close(self) -> None:
        self._session = None

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._spec.name: batch})[0]

    def precision(self) -> str | None:
        return self._meta.get("precision") or super().precision() or ("fp16" if self._spec.dtype == "float16" else None)

    def layer_times(self, batch: np.ndarray, runs: int) -> list[dict] | None:
        """Runs a second, profiling session; drops each node's first (warm-up) event; names modules."""
        with tempfile.TemporaryDirectory(prefix="edgeft-ort-") as tmp:
            session = self._new_session(profile_dir=tmp)
            for _ in range(runs + 1):
                session.run([self._output], {self._spec.name: batch})
            trace = json.loads(Path(session.end_profiling()).read_text())
        per_node: dict[str, list[tuple[str, str, float]]] = {}
        for event in trace:
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = name[: -len("_kernel_time")]
                per_node.setdefault(node, []).append((node, event.get("args", {}).get("op_name", ""), event["dur"] / 1e3))
        by_run = [[events[i] for events in per_node.values() if i < len(events)] for i in range(1, runs + 1)]
        return with_modules(median_by_layer(by_run), self._modules)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "providers": self._session.get_providers() if self._session else None}
