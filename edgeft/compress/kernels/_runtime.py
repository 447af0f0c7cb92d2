"""Run-time compilation (NVRTC) and launching (CUDA driver) of the fused kernels through cuda-python.

All kernels live in one NVRTC program (`common.cuh`, `aft.cu`, `pts.cu`, shipped as package data).
The image is compiled once per GPU architecture (cubin; PTX for an architecture newer than this
NVRTC knows), cached in memory and under `~/.cache/edgeft/kernels` (or `$EDGEFT_KERNEL_CACHE`),
and loaded once per device. Every launch goes to PyTorch's current stream of that device.

A *launcher* is anything with `launch`, `max_blocks` and `barrier`; `DeviceKernels` is the CUDA
one. `register_launcher` installs another for a device type — the tests run the same kernels on
the CPU through an emulator that way.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

log = logging.getLogger(__name__)

SOURCES = ("common.cuh", "aft.cu", "pts.cu")
THREADS = 256  # EDGEFT_THREADS in common.cuh
_PROGRAM = b'#include "aft.cu"\n#include "pts.cu"\n'


class KernelUnavailable(RuntimeError):
    """The fused kernels cannot run here (no cuda-python, no NVRTC, compile or load failure)."""


class Launcher(Protocol):
    def launch(self, name: str, grid: int, params: ctypes.Structure, smem: int, cooperative: bool) -> None: ...

    def max_blocks(self, name: str, smem: int) -> int: ...

    def barrier(self) -> int: ...


def sources() -> dict[str, str]:
    """The kernel sources by file name."""
    root = resources.files(__package__)
    return {name: root.joinpath(name).read_text(encoding="utf-8") for name in SOURCES}


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise KernelUnavailable("cuda-python is not installed: pip install 'edgeft[cuda]'") from None
    return nvrtc


def supported_archs() -> list[int]:
    """Compute capabilities (e.g. 87, 90) this NVRTC can compile for."""
    nvrtc = _nvrtc()
    try:
        err, archs = nvrtc.nvrtcGetSupportedArchs()
    except Exception as exc:  # the library itself is missing (cuda-pathfinder raises its own errors)
        raise KernelUnavailable(f"NVRTC cannot be loaded: {exc}") from None
    _check_nvrtc(err, "nvrtcGetSupportedArchs")
    return list(archs)


def target_arch(capability: tuple[int, int]) -> tuple[int, bool]:
    """(architecture, as PTX?) to compile for a device of `capability`: its own cubin when NVRTC
    knows it, else PTX for the newest older architecture (the driver compiles it on load)."""
    cc = capability[0] * 10 + capability[1]
    archs = supported_archs()
    if cc in archs:
        return cc, False
    older = [a for a in archs if a < cc]
    if not older:
        raise KernelUnavailable(f"NVRTC supports sm_{min(archs)} and newer, the GPU is sm_{cc}")
    return max(older), True


_IMAGES: dict[tuple[int, bool], bytes] = {}
_IMAGES_LOCK = threading.Lock()


def compile_kernels(arch: int, ptx: bool = False) -> bytes:
    """The compiled program for `sm_<arch>` (cubin) or `compute_<arch>` (PTX); cached in memory and on disk."""
    with _IMAGES_LOCK:
        if (arch, ptx) not in _IMAGES:
            _IMAGES[arch, ptx] = _cached_compile(arch, ptx)
        return _IMAGES[arch, ptx]


def _cached_compile(arch: int, ptx: bool) -> bytes:
    nvrtc = _nvrtc()
    options = [f"--gpu-architecture={'compute' if ptx else 'sm'}_{arch}", "-std=c++17"]
    code = sources()
    digest = hashlib.sha256(repr((options, sorted(code.items()), nvrtc.nvrtcVersion())).encode()).hexdigest()[:24]
    path = Path(os.environ.get("EDGEFT_KERNEL_CACHE", Path.home() / ".cache" / "edgeft" / "kernels"))
    path = path / f"edgeft-{digest}.{'ptx' if ptx else 'cubin'}"
    if path.is_file():
        return path.read_bytes()
    image = _compile(nvrtc, code, options)
    try:
        from edgeft import artifacts

        artifacts.write_bytes(path, image)
    except OSError as exc:  # a read-only home only costs the next process a recompile
        log.debug("kernel cache %s not written: %s", path, exc)
    return image


def _compile(nvrtc: Any, code: dict[str, str], options: list[str]) -> bytes:
    names = list(code)
    err, program = nvrtc.nvrtcCreateProgram(_PROGRAM, b"edgeft_kernels.cu", len(names),
                                            [code[n].encode() for n in names], [n.encode() for n in names])
    _check_nvrtc(err, "nvrtcCreateProgram")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            text = bytearray(size)  # written in place (never a bytes object: short ones are shared)
            nvrtc.nvrtcGetProgramLog(program, text)
            errors = [line for line in text.decode(errors="replace").splitlines() if "error" in line]
            raise KernelUnavailable(f"NVRTC failed ({options[0]}): {errors[0] if errors else 'see log'}")
        ptx = options[0].startswith("--gpu-architecture=compute")
        get_size, get = ((nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX) if ptx
                         else (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN))
        err, size = get_size(program)
        _check_nvrtc(err, "size query")
        image = bytearray(size)
        (err,) = get(program, image)
        _check_nvrtc(err, "image query")
        return bytes(image)
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _check_nvrtc(err: Any, what: str) -> None:
    nvrtc = _nvrtc()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelUnavailable(f"{what}: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")


class DeviceKernels:
    """The compiled kernels loaded on one CUDA device (its primary context)."""

    def __init__(self, index: int) -> None:
        try:
            from cuda.bindings import driver
        except ImportError:
            raise KernelUnavailable("cuda-python is not installed: pip install 'edgeft[cuda]'") from None
        self._driver, self.index = driver, index
        arch, ptx = target_arch(torch.cuda.get_device_capability(index))
        image = compile_kernels(arch, ptx)
        self._call(driver.cuInit(0), "cuInit")
        with torch.cuda.device(index):
            self._ensure_context()
            self._module = self._call(driver.cuModuleLoadData(image), "cuModuleLoadData")
        self._sm_count = torch.cuda.get_device_properties(index).multi_processor_count
        self._functions: dict[str, Any] = {}
        self._occupancy: dict[tuple[str, int], int] = {}
        self._barriers: dict[int, torch.Tensor] = {}
        log.info("fused kernels loaded on cuda:%d (%s_%d)", index, "compute" if ptx else "sm", arch)

    def _call(self, result: Any, what: str) -> Any:
        err, *value = result if isinstance(result, tuple) else (result,)
        if err != self._driver.CUresult.CUDA_SUCCESS:
            raise KernelUnavailable(f"{what} failed: {self._driver.cuGetErrorName(err)[1].decode()}")
        return value[0] if len(value) == 1 else None

    def _ensure_context(self) -> None:
        """Makes the device's primary context (PyTorch's) current on a thread that has none."""
        if int(self._call(self._driver.cuCtxGetCurrent(), "cuCtxGetCurrent")) == 0:
            device = self._call(self._driver.cuDeviceGet(self.index), "cuDeviceGet")
            context = self._call(self._driver.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
            self._call(self._driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    def _function(self, name: str) -> Any:
        if name not in self._functions:
            self._functions[name] = self._call(self._driver.cuModuleGetFunction(self._module, name.encode()), name)
        return self._functions[name]

    def max_blocks(self, name: str, smem: int) -> int:
        """Blocks of `name` that fit on the device at once (the limit of a cooperative grid)."""
        if (name, smem) not in self._occupancy:
            per_sm = self._call(self._driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
                self._function(name), THREADS, smem), "cuOccupancyMaxActiveBlocksPerMultiprocessor")
            self._occupancy[name, smem] = max(1, per_sm) * self._sm_count
        return self._occupancy[name, smem]

    def barrier(self) -> int:
        """Address of the grid-barrier word of the current stream (launches on one stream never overlap)."""
        stream = torch.cuda.current_stream(self.index).cuda_stream
        if stream not in self._barriers:
            self._barriers[stream] = torch.zeros(1, dtype=torch.int32, device=f"cuda:{self.index}")
        return self._barriers[stream].data_ptr()

    def launch(self, name: str, grid: int, params: ctypes.Structure, smem: int, cooperative: bool) -> None:
        """Launches `name(params)` with `grid` blocks of 256 threads on the current stream."""
        if torch.cuda.current_device() != self.index:
            with torch.cuda.device(self.index):
                return self.launch(name, grid, params, smem, cooperative)
        d = self._driver
        self._ensure_context()
        args = (ctypes.c_void_p * 1)(ctypes.addressof(params))
        stream = d.CUstream(torch.cuda.current_stream(self.index).cuda_stream)
        fn = self._function(name)
        if cooperative:
            result = d.cuLaunchCooperativeKernel(fn, grid, 1, 1, THREADS, 1, 1, smem, stream, ctypes.addressof(args))
        else:
            result = d.cuLaunchKernel(fn, grid, 1, 1, THREADS, 1, 1, smem, stream, ctypes.addressof(args), 0)
        self._call(result, f"launch of {name}")


_LAUNCHERS: dict[tuple[str, int | None], Launcher] = {}
_FAILURES: dict[tuple[str, int | None], KernelUnavailable] = {}  # not retried: compiling is slow
_FACTORIES: dict[str, Callable[[torch.device], Launcher]] = {"cuda": lambda device: DeviceKernels(device.index)}
_LAUNCHERS_LOCK = threading.Lock()


def get_launcher(device: torch.device) -> Launcher:
    """The launcher for `device` (compiled and loaded on first use); KernelUnavailable if there is none."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device.type, device.index)
    with _LAUNCHERS_LOCK:
        if key in _FAILURES:
            raise _FAILURES[key]
        if key not in _LAUNCHERS:
            if device.type not in _FACTORIES:
                raise KernelUnavailable(f"no fused kernels for {device.type} tensors")
            try:
                _LAUNCHERS[key] = _FACTORIES[device.type](device)
            except KernelUnavailable as exc:
                _FAILURES[key] = exc
                raise
        return _LAUNCHERS[key]


def disable(device: torch.device, error: KernelUnavailable) -> None:
    """Makes `get_launcher(device)` raise `error` from now on (after a failed launch)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _LAUNCHERS_LOCK:
        _LAUNCHERS.pop((device.type, device.index), None)
        _FAILURES[device.type, device.index] = error


def has_launcher(device: torch.device) -> bool:
    """Whether fused kernels exist for tensors on `device` (they may still fail to compile)."""
    return device.type in _FACTORIES


def register_launcher(device_type: str, factory: Callable[[torch.device], Launcher] | None) -> None:
    """Installs (or, with None, removes) the launcher factory for a device type other than cuda."""
    if device_type == "cuda":
        raise ValueError("the cuda launcher is built in")
    with _LAUNCHERS_LOCK:
        for cache in (_LAUNCHERS, _FAILURES):
            for key in [k for k in cache if k[0] == device_type]:
                del cache[key]
        if factory is None:
            _FACTORIES.pop(device_type, None)
        else:
            _FACTORIES[device_type] = factory


def workspace(device: torch.device, **sizes: int) -> tuple[torch.Tensor, dict[str, int]]:
    """One float32 buffer holding the named arrays (`name=elements`), each 16-byte aligned.

    Returns the buffer (keep it alive while a kernel may use it) and each array's address.
    """
    offsets, total = {}, 0
    for name, count in sizes.items():
        offsets[name] = total
        total += -(-max(count, 1) // 4) * 4
    buffer = torch.empty(total, dtype=torch.float32, device=device)
    return buffer, {name: buffer.data_ptr() + 4 * offset for name, offset in offsets.items()}
