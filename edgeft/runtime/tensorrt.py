"""TensorRT backend: serialized engines (or ONNX built on the device), buffers via cuda-python.

TensorRT engines are tied to the GPU and TensorRT version that built them (ECOSYSTEM.md
pain point 1), so an ONNX file given with `--backend tensorrt` is built here, on the
device (strongly typed: the ONNX variant sets the precision); a plan that does not
deserialize fails with the rebuild command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeft.artifacts import write_bytes
from edgeft.errors import EdgeftError
from edgeft.runtime.base import Engine, InputSpec, median_by_layer
from edgeft.runtime.fingerprint import find_record

WORKSPACE_BYTES = 1 << 30
DEFAULT_PROFILE = (1, 8, 32)  # min, opt, max batch of a dynamic ONNX built without an explicit profile


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise EdgeftError("cuda-python is not installed: pip install 'edgeft[tensorrt]'") from None
    return cudart


def _check(result):
    """cuda-python calls return (error, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgeftError(f"CUDA error {err}; is a GPU visible (nvidia-smi)?")
    return values[0] if len(values) == 1 else values


def build_engine(onnx_path: Path, profile: tuple[int, int, int] | None = None, timing_cache: Path | None = None,
                 logger=None) -> bytes:
    """Builds a serialized engine from ONNX on this GPU, strongly typed: the ONNX sets the precision.

    The one TensorRT builder of edgeft (`edgeft export --format tensorrt` and on-device
    builds from ONNX). Ship the precision's ONNX variant that the export writes
    (engines/tensorrt/model-fp16.onnx, the Q/DQ model-int8.onnx). A static batch axis is
    built as it is; a dynamic one gets the optimisation profile `profile` (min, opt, max
    batch; DEFAULT_PROFILE when not given). `timing_cache` is read and updated when given.
    TensorRT 11 dropped the weak-typing precision flags, so strongly typed is the one path
    that works on TensorRT 10 and 11.
    """
    trt = TensorRtEngine.require()
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeftError(f"{onnx_path}: TensorRT cannot parse it ({errors[:200]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    inp = network.get_input(0)
    if inp.shape[0] == -1:
        rest = tuple(inp.shape[1:])
        points = builder.create_optimization_profile()
        points.set_shape(inp.name, *[(b, *rest) for b in (profile or DEFAULT_PROFILE)])
        config.add_optimization_profile(points)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgeftError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    if timing_cache is not None:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def recorded_profile(onnx_path: Path) -> tuple[int, int, int] | None:
    """The --batch-profile that `edgeft export` recorded for this ONNX in its run's export manifest."""
    found = find_record(onnx_path)
    batch = found[1].get("batch") if found else None
    return (batch["min"], batch["opt"], batch["max"]) if isinstance(batch, dict) else None


class TensorRtEngine(Engine):
    """A TensorRT engine on the first CUDA device; input/output buffers allocated per batch shape."""

    name = "tensorrt"
    format = "tensorrt"
    suffixes = (".engine", ".plan", ".trt")
    module = "tensorrt"
    install = "edgeft[tensorrt]"
    layer_profiler = "TensorRT IProfiler (per fused layer)"

    def open(self) -> None:
        trt = self.require()
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        if self.path.suffix == ".onnx":
            plan = build_engine(self.path, recorded_profile(self.path), logger=self._logger)
        else:
            plan = self.path.read_bytes()
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EdgeftError(
                f"{self.path}: this TensorRT/GPU cannot load the engine (built elsewhere?); rebuild it here from "
                "the ONNX: edgeft profile MODEL.onnx --backend tensorrt"
            )
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == mode)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) != mode)
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in (self._input, self._output)}
        shape = tuple(self._engine.get_tensor_shape(self._input))
        max_batch = None
        if shape[0] == -1:
            max_batch = self._engine.get_tensor_profile_shape(self._input, 0)[2][0]
        self._spec = InputSpec(self._input, tuple(None if d == -1 else d for d in shape),
                               str(self._dtypes[self._input]), max_batch=max_batch)
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
            self._context.set_tensor_address(name, int(ptr))
        return ptr

    def close(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        cudart, kinds = self._cudart, self._cudart.cudaMemcpyKind
        self._context.set_input_shape(self._input, batch.shape)
        out = np.empty(tuple(self._context.get_tensor_shape(self._output)), self._dtypes[self._output])
        src = self._buffer(self._input, batch.nbytes)
        dst = self._buffer(self._output, out.nbytes)
        _check(cudart.cudaMemcpyAsync(src, batch.ctypes.data, batch.nbytes, kinds.cudaMemcpyHostToDevice, self._stream))
        if not self._context.execute_async_v3(int(self._stream)):
            raise EdgeftError(f"{self.path}: TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, dst, out.nbytes, kinds.cudaMemcpyDeviceToHost, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return out

    def layer_times(self, batch: np.ndarray, runs: int) -> list[dict] | None:
        trt = self.require()
        current: list[tuple[str, str, float]] = []

        class Recorder(trt.IProfiler):
            def report_layer_time(self, layer_name: str, ms: float) -> None:
                current.append((layer_name, "", ms))

        self._context.profiler = Recorder()
        per_run = []
        for i in range(runs + 1):
            current.clear()
            self.run(batch)
            if i:
                per_run.append(list(current))
        # A profiled context reports every later run too, so profiling ends with a fresh context.
        self._context = self._engine.create_execution_context()
        for name, (ptr, _) in self._buffers.items():
            self._context.set_tensor_address(name, int(ptr))
        return median_by_layer(per_run)

    def info(self) -> dict[str, Any]:
        props = _check(self._cudart.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {**super().info(), "device": name.strip("\x00"), "sm": f"{props.major}.{props.minor}",
                "device_memory_mb": round(getattr(self._engine, "device_memory_size_v2",
                                                  self._engine.device_memory_size) / 2**20, 1)}
