"""One definition of each latency and throughput figure (DESIGN.md §House style 12).

A profile record (measured: runtime/profile.py; estimated: targets/estimate.py) holds the
latency percentiles of its timed runs at one batch (`latency_ms`, at `batch_of(record)`)
and, optionally, a batch sweep. From these, and only here, come:

- **img/s at batch N**: N × 1000 / p50 ms of the timed runs; at batch 1 this is 1000 / p50,
  the edge figure (one image at a time);
- **best img/s (batch M)**: the highest img/s over the timed runs and the sweep's rows at
  other batches, each computed the same way, with the batch M that reaches it (a sweep row at
  the timed runs' own batch is ignored: the timed runs have more samples).

The record's JSON, the CLI tables, report.md/html, the model cards and the --fail-if `fps`
metric all read `throughput(record)`, so one engine shows the same numbers everywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

AT_BATCH = "img/s at batch"
BEST = "best img/s (batch)"
DEFINITION = ("img/s at batch N = N × 1000 / p50 ms of the timed runs at that batch (batch 1: 1000 / p50); "
              "best img/s = the highest of that and of the batch sweep's rows at other batches, computed the same way")


def images_per_s(batch: int, p50_ms: float) -> float:
    """Images per second of runs of `batch` images whose median latency is `p50_ms`."""
    return round(batch * 1e3 / p50_ms, 2)


def batch_of(record: dict) -> int:
    """The batch of a record's timed runs (profiles without one were taken at the default, 1)."""
    return (record.get("input") or {}).get("batch") or record.get("batch") or 1


@dataclass(frozen=True)
class Throughput:
    """A record's throughput figures, with the batch each is at."""

    batch: int
    images_per_s: float | None  # at `batch`, from the timed runs' p50
    best_images_per_s: float | None
    best_batch: int | None

    def cells(self) -> tuple[str, str]:
        """The (img/s at batch, best img/s (batch)) table cells, e.g. ('615.0 (b1)', '2410.5 (b16)')."""
        at = f"{self.images_per_s:.1f} (b{self.batch})" if self.images_per_s is not None else ""
        best = f"{self.best_images_per_s:.1f} (b{self.best_batch})" if self.best_images_per_s is not None else ""
        return at, best

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "definition": DEFINITION}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Throughput":
        return cls(data["batch"], data["images_per_s"], data["best_images_per_s"], data["best_batch"])


def throughput(record: dict) -> Throughput:
    """The record's img/s at its batch and its best img/s over the sweep (see the module doc)."""
    batch = batch_of(record)
    p50 = (record.get("latency_ms") or {}).get("p50")
    at = images_per_s(batch, p50) if isinstance(p50, (int, float)) and p50 > 0 else None
    points = [(at, batch)] if at is not None else []
    for row in (record.get("throughput") or {}).get("sweep") or []:
        if row.get("batch") != batch and isinstance(row.get("latency_ms_p50"), (int, float)) and row["latency_ms_p50"] > 0:
            points.append((images_per_s(row["batch"], row["latency_ms_p50"]), row["batch"]))
    best, best_batch = max(points, default=(None, None))
    return Throughput(batch, at, best, best_batch)


def throughput_json(batch: int, p50_ms: float, sweep: list[dict]) -> dict[str, Any]:
    """The `throughput` field of a profile record: img/s at `batch`, the sweep, and the best of both."""
    figures = throughput({"batch": batch, "latency_ms": {"p50": p50_ms}, "throughput": {"sweep": sweep}})
    return {"batch": batch, "images_per_s": figures.images_per_s, "sweep": sweep,
            "best": {"batch": figures.best_batch, "images_per_s": figures.best_images_per_s}, "definition": DEFINITION}


def sweep_row(batch: int, p50_ms: float, **extra: float) -> dict[str, Any]:
    """One row of a batch sweep: its batch, p50 and img/s (defined as above)."""
    return {"batch": batch, "latency_ms_p50": round(p50_ms, 4), **extra,
            "images_per_s": images_per_s(batch, round(p50_ms, 4))}
