"""OpenVINO backend: IR (.xml + .bin) or ONNX on the CPU (or another OpenVINO device)."""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.runtime.base import DTYPES, Engine, InputSpec, as_floats, card_from_metadata, median_by_layer
from edgeft.runtime.layers import parse_modules, with_modules


# The CPU plugin computes in bf16 by default where the CPU supports it; edgeft pins the
# precision so that an "fp32" figure means fp32 arithmetic (ECOSYSTEM.md pain point 8).
HINTS = {None: "f32", "fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


class OpenVinoEngine(Engine):
    """An OpenVINO model compiled for one device (CPU unless options.extra['device'])."""

    name = "openvino"
    format = "openvino"
    suffixes = (".xml",)
    module = "openvino"
    install = "openvino"
    layer_profiler = "OpenVINO performance counters (PERF_COUNT, executed nodes)"

    def open(self) -> None:
        ov = self.require()
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(self.path))
        except RuntimeError as exc:
            raise EdgeftError(f"{self.path}: OpenVINO cannot read it ({str(exc).splitlines()[0][:200]})") from None
        self._compiled = self._compile(profiling=False)
        self._request = self._compiled.create_infer_request()
        port = self._compiled.inputs[0]
        shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        rt_info = _rt_strings(self._model.get_rt_info())
        self._meta, self._modules = card_from_metadata(rt_info), parse_modules(rt_info)
        self._spec = InputSpec(port.get_any_name(), shape, DTYPES.get(port.get_element_type().get_type_name(), "float32"),
                               as_floats(self._meta.get("mean")), as_floats(self._meta.get("std")))

    def _compile(self, profiling: bool):
        device = self.options.extra.get("device", "CPU")
        config: dict[str, Any] = {"PERF_COUNT": "YES" if profiling else "NO"}
        if device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = HINTS.get(self.options.precision, "f32")
            if self.options.threads:
                config["INFERENCE_NUM_THREADS"] = self.options.threads
        return self._core.compile_model(self._model, device, config)

    def close(self) -> None:
        self._request = self._compiled = self._model = None

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        # `infer` wraps the (contiguous) batch instead of copying it into a new tensor, and hands out
        # views of the outputs: the one copy is the returned logits (as benchmark_app, which sets the
        # input tensor once and copies nothing per run).
        self._request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return np.array(self._request.get_output_tensor(0).data, copy=True)

    def precision(self) -> str | None:
        return self._meta.get("precision") or super().precision()

    def layer_times(self, batch: np.ndarray, runs: int) -> list[dict] | None:
        """Performance counters of executed nodes; one warm-up run is dropped; names modules."""
        request = self._compile(profiling=True).create_infer_request()
        request.infer({0: batch})
        per_run = []
        for _ in range(runs):
            request.infer({0: batch})
            per_run.append([(p.node_name, f"{p.node_type}/{p.exec_type}", p.real_time.total_seconds() * 1e3)
                            for p in request.get_profiling_info() if p.status.name == "EXECUTED"])
        return with_modules(median_by_layer(per_run), self._modules)

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self._compiled is not None:
            hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            info["inference_precision"] = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
            info["device"] = self.options.extra.get("device", "CPU")
        return info


def _rt_strings(rt_info) -> dict[str, str]:
    """OpenVINO runtime info (nested maps of OVAny; ONNX metadata under 'framework') → flat str dict."""
    flat: dict[str, str] = {}
    for key, value in rt_info.items():
        if isinstance(value, dict):
            flat.update(_rt_strings(value))
        else:
            flat[key] = value.astype(str) if hasattr(value, "astype") else str(value)
    return flat
