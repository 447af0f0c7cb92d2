"""The profiler's record: structure and internal consistency (timing targets live in tools/bench_latency.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeft.errors import ConfigError
from edgeft.runtime.profile import MemoryMeter, ProfileConfig, profile_engine, stats

QUICK = ProfileConfig(warmup=2, iterations=8, seconds=0.05, threads=1, max_batch=4, layer_runs=2)


def test_profile_record_is_complete_and_consistent(tiny_onnx: Path) -> None:
    record = profile_engine(tiny_onnx, cfg=QUICK)
    assert record["label"] == "measured" and record["backend"] == "onnxruntime" and record["precision"] == "fp32"
    lat = record["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert record["iterations"] == len(record["samples_ms"]) >= QUICK.iterations
    assert record["first_inference_ms"] > 0 and record["load_ms"] > 0
    sweep = record["throughput"]["sweep"]
    assert [row["batch"] for row in sweep] == [1, 2, 4][: len(sweep)] and sweep
    best, at_batch = record["throughput"]["best"], record["throughput"]["images_per_s"]
    assert at_batch == round(1e3 / lat["p50"], 2)  # batch 1: 1000 / p50 (edgeft.figures)
    assert best["images_per_s"] == max([at_batch] + [row["images_per_s"] for row in sweep if row["batch"] != 1])
    assert all(row["images_per_s"] == round(row["batch"] * 1e3 / row["latency_ms_p50"], 2) for row in sweep)
    assert record["memory"]["peak_rss_mb"] >= record["memory"]["rss_before_mb"] > 0
    assert record["layers"] and record["layer_profiler"].startswith("onnxruntime")
    assert record["config"]["threads"] == 1 and record["runtime"]["version"]
    assert record["input"]["batch"] == 1 and record["host"]["cores"] >= 1


def test_runs_continue_until_both_minimums(tiny_onnx: Path) -> None:
    record = profile_engine(tiny_onnx, cfg=ProfileConfig(warmup=0, iterations=1, seconds=0.2, sweep=False, layers=False))
    assert sum(record["samples_ms"]) >= 150  # time minimum reached although 1 iteration was asked for
    assert record["throughput"]["sweep"] == [] and record["layers"] is None


def test_stats_of_known_samples() -> None:
    s = stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["mean"] == 22.0


@pytest.mark.parametrize("bad, flag", [({"batch": 0}, "--batch"), ({"threads": 0}, "--threads"),
                                       ({"iterations": 0}, "--iterations"), ({"seconds": -1}, "--seconds")])
def test_bad_profile_options_name_the_flag(tiny_onnx: Path, bad: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        profile_engine(tiny_onnx, cfg=ProfileConfig(**bad))


def test_memory_meter_sees_an_allocation() -> None:
    import numpy as np

    with MemoryMeter() as meter:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        block += 1
    assert meter.to_json()["peak_increase_mb"] >= 32


def test_memory_meter_sees_a_freed_peak_without_a_thread() -> None:
    import mmap
    import threading

    with MemoryMeter() as meter:
        threads = threading.active_count()
        # 64 MB fresh from the kernel (not from an allocator that may hold freed pages), touched, freed
        with mmap.mmap(-1, 64 * 2**20) as block:
            for offset in range(0, len(block), mmap.PAGESIZE):
                block[offset] = 1
    assert threading.active_count() == threads  # nothing samples beside the timed runs
    assert meter.to_json()["peak_increase_mb"] >= 32


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: the kernel's resettable peak")
def test_memory_meter_does_not_count_an_earlier_peak() -> None:
    import numpy as np

    block = np.ones(256 * 2**20 // 8)  # 256 MB before the block
    del block
    with MemoryMeter() as meter:
        pass
    assert meter.to_json()["peak_increase_mb"] < 64
