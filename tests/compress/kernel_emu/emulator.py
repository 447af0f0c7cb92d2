"""Builds the CPU emulator of the fused kernels (g++) and offers it as a launcher for CPU tensors.

The kernel sources compile unchanged against emu.h; the autograd Functions of
`edgeft.compress.kernels` then run them on CPU tensors through `Emulator`, exactly as they run
on a GPU (same parameter structs, plans, workspaces and phases), only slower.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

from edgeft.compress.kernels import _runtime

HERE = Path(__file__).resolve().parent
KERNELS = Path(_runtime.__file__).resolve().parent
THREADS = 256


def build(out_dir: Path, sanitize: bool = False) -> Path:
    """Compiles the kernels and the emulator runtime into `out_dir/libedgeft_emu.so`."""
    cxx = shutil.which("g++")
    if cxx is None:
        raise FileNotFoundError("g++ is not on PATH")
    lib = out_dir / ("libedgeft_emu_asan.so" if sanitize else "libedgeft_emu.so")
    flags = ["-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else []
    subprocess.run([cxx, "-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing", *flags,
                    "-Wall", "-Werror", "-Wno-unknown-pragmas", f"-I{KERNELS}", f"-I{HERE}", "-include", "emu.h",
                    str(HERE / "kernels.cpp"), str(HERE / "emu.cpp"), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return lib


class Emulator:
    """A `_runtime.Launcher` for CPU tensors; `blocks` caps the grid (small: exercises the grid-stride loops)."""

    def __init__(self, lib: Path, blocks: int = 3) -> None:
        self._lib = ctypes.CDLL(str(lib))
        self._lib.edgeft_emu_launch.restype = ctypes.c_int
        self._lib.edgeft_emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_uint] * 3
        self.blocks = blocks
        self.launches: list[tuple[str, int, bool]] = []

    def max_blocks(self, name: str, smem: int) -> int:
        return self.blocks

    def barrier(self) -> int:
        return 0

    def launch(self, name: str, grid: int, params: ctypes.Structure, smem: int, cooperative: bool) -> None:
        if not 1 <= grid <= self.blocks:
            raise ValueError(f"{name}: grid {grid} outside 1..{self.blocks}")
        kernel = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p)
        if self._lib.edgeft_emu_launch(kernel, ctypes.byref(params), grid, THREADS, smem) != 0:
            raise RuntimeError(f"emulated launch of {name} failed")
        self.launches.append((name, grid, cooperative))
