"""Figures of this machine (the `host` target): peak compute derived from the CPU, bandwidth measured.

They only anchor the roofline for the host's own calibration, so a consistent derivation
matters more than an exact peak: the fitted efficiency absorbs the rest.
"""
from __future__ import annotations

import dataclasses
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeft.targets import Figure, Target, get_target

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
DEFAULT_GHZ = 2.5


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    if CPUINFO.exists():
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return info


def flops_per_cycle(flags: set[str]) -> int:
    """FP32 FLOP per cycle per core from SIMD flags (two FMA pipes assumed)."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return 16  # SSE / NEON (2x 128-bit FMA)


@lru_cache(maxsize=1)
def memory_bandwidth_gbs(size_mb: int = 256, repeats: int = 3) -> float:
    """Best of a few single-threaded numpy copies of `size_mb` (read + write counted)."""
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def host_target(threads: int | None = None) -> Target:
    """The `host` target with figures for `threads` cores (all cores by default)."""
    info = _cpuinfo()
    cores = threads or os.cpu_count() or 1
    ghz = float(info.get("cpu MHz", DEFAULT_GHZ * 1e3)) / 1e3
    flags = set(info.get("flags", info.get("Features", "")).split())
    fp32 = cores * ghz * flops_per_cycle(flags) / 1e3
    how = f"derived: {cores} cores x {ghz:.2f} GHz x {flops_per_cycle(flags)} FLOP/clk (/proc/cpuinfo)"
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})
    peak = {
        "fp32": Figure(round(fp32, 4), "TFLOPS", how),
        "fp16": Figure(round(fp32, 4), "TFLOPS", how + "; fp16 computed at the fp32 rate on this CPU"),
        "int8": Figure(round(fp32 * (4 if vnni else 2), 4), "TOPS", how + ("; x4 with VNNI/dot-product" if vnni else "; x2")),
    }
    ram_kb = next((int(line.split()[1]) for line in MEMINFO.read_text().splitlines() if line.startswith("MemTotal")),
                  0) if MEMINFO.exists() else 0
    return dataclasses.replace(
        get_target("host"),
        title=f"This machine: {info.get('model name', 'unknown CPU')} ({cores} threads)",
        peak=peak,
        memory_bandwidth=Figure(round(memory_bandwidth_gbs(), 2), "GB/s", "measured: numpy copy of 256 MB, best of 3"),
        ram=Figure(round(ram_kb / 2**20, 1), "GB", "measured: /proc/meminfo MemTotal"),
    )
