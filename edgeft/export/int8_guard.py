"""Accuracy-bounded INT8 (`--max-drop POINTS`): other calibrators, then layers kept in float, else refusal.

Format-neutral: each exporter brings its own quantiser (ONNX Runtime: export/onnx_int8.py; NNCF:
export/openvino.py) and hands `bounded_int8` its candidates. Without a bound, INT8 is the
backend's one default calibration (`unbounded`), as before. With one, every candidate is measured
on the run's held-out reference images against PyTorch (validate.compare) with the INT8 tolerance
whose accuracy limit is the bound, and the first that holds is kept:

1. each calibration try the backend offers, in its order (a `skippable` one that fails on this
   graph is recorded and skipped; any other failure is the backend's to report);
2. if none holds, the backend's `keep_float` fallback for the best calibrator: candidates with
   the most sensitive layers kept in float, at most KEPT_SHARE of the quantized layers (`max_kept`);
3. if the last of those still breaks the bound, INT8 is refused with the best measured drop
   (a RefusedError naming --max-drop; the export goes on with the other engines).

The outcome (calibrator, kept layers, drop, every try) goes into the engine's ExportRecord
(`Search.record`); `describe` sums it up for the CLI.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, NoReturn, Sequence, TypeVar

from edgeft.errors import ConfigError, RefusedError
from edgeft.export.validate import DEFAULT_TOLERANCES, Runner, compare

if TYPE_CHECKING:
    from edgeft.export.base import ExportJob

log = logging.getLogger(__name__)

KEPT_SHARE = 0.25  # at most this share of the quantized layers stays in float before INT8 is refused

Candidate = TypeVar("Candidate")  # what a backend quantises into: an ONNX file, an in-memory OpenVINO model


def check_max_drop(max_drop: float | None) -> None:
    if max_drop is not None and not (max_drop >= 0 and math.isfinite(max_drop)):
        raise ConfigError(f"--max-drop {max_drop}: give the accuracy points INT8 may lose, a number >= 0 (e.g. 1.0)")


def max_kept(layers: int) -> int:
    return max(1, int(layers * KEPT_SHARE))


def unbounded(calibrator: str) -> dict[str, Any]:
    """The record of INT8 made without --max-drop: the backend's one default calibration."""
    return {"calibrator": calibrator, "kept_layers": [], "max_drop": None}


@dataclass(frozen=True)
class Try(Generic[Candidate]):
    """One INT8 candidate a backend offers: its calibrator, the layers it keeps in float and how to build it."""

    calibrator: str
    build: Callable[[], Candidate]
    kept: Sequence[str] = ()
    skippable: bool = False  # a failure (quantiser or measurement) is recorded and the next try goes on


@dataclass
class Search:
    """Every INT8 candidate of one backend, measured on the job's reference images."""

    job: "ExportJob"
    backend: str
    tried: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, runner: Runner, calibrator: str, kept: list[str]) -> bool:
        """Records the candidate's accuracy drop; True when it passes the bounded INT8 tolerance."""
        figures = compare(runner, self.job.reference, self.job.card)
        failures = figures.failures(self.job.tolerance(DEFAULT_TOLERANCES["int8"], "int8"))
        drop = round((figures.reference_accuracy - figures.accuracy) * 100, 3)
        self.tried.append({"calibrator": calibrator, "kept": len(kept), "drop_points": drop, "passed": not failures,
                           "failures": failures})
        log.info("%s int8 %s, %d layers in float: %s%s", self.backend, calibrator,
                 len(kept), versus_pytorch(drop), "" if not failures else f" ({'; '.join(failures)})")
        return not failures

    def failed(self, calibrator: str, exc: Exception) -> None:
        """Records a calibration that failed on this graph (no drop measured)."""
        self.tried.append({"calibrator": calibrator, "kept": 0, "drop_points": None, "passed": False,
                           "failures": [f"calibration failed: {str(exc)[:120]}"]})

    def best(self) -> dict[str, Any]:
        measured = [t for t in self.tried if t["drop_points"] is not None]
        return min(measured, key=lambda t: (not t["passed"], len(t["failures"]), t["drop_points"]))

    def record(self, calibrator: str, kept: list[str]) -> dict[str, Any]:
        return {"calibrator": calibrator, "kept_layers": kept, "drop_points": self.tried[-1]["drop_points"],
                "max_drop": self.job.max_drop, "tried": [{k: t[k] for k in ("calibrator", "kept", "drop_points")}
                                                         | ({"error": t["failures"][0]} if t["drop_points"] is None else {})
                                                         for t in self.tried]}

    def refuse(self) -> NoReturn:
        best = self.best()
        extra = f" (failing: {'; '.join(best['failures'])})" if best["failures"] else ""
        raise RefusedError(
            f"--max-drop {self.job.max_drop:g}: {self.backend} INT8 cannot hold it: the best of {len(self.tried)} "
            f"tries ({best['calibrator']} calibration, {best['kept']} layers kept in float) is "
            f"{versus_pytorch(best['drop_points'])} on {len(self.job.reference.labels)} held-out images"
            f"{extra}; raise --max-drop or export fp16"
        )


def describe(quantization: dict[str, Any] | None) -> str:
    """One line for the CLI: what the bounded INT8 search chose."""
    if not quantization or quantization.get("max_drop") is None:
        return ""
    kept = quantization["kept_layers"]
    layers = f"{len(kept)} layers kept in float ({', '.join(kept[:3])}{', …' if len(kept) > 3 else ''})" \
        if kept else "no layer kept in float"
    tries = len(quantization["tried"])
    return (f"{quantization['calibrator']} calibration, {layers}: {versus_pytorch(quantization['drop_points'])} "
            f"(--max-drop {quantization['max_drop']:g}; {tries} {'try' if tries == 1 else 'tries'})")


def versus_pytorch(drop_points: float) -> str:
    """An accuracy drop in words: '0.60 points below PyTorch', or 'above' for a gain."""
    return f"{abs(drop_points):.2f} points {'below' if drop_points >= 0 else 'above'} PyTorch"


def bounded_int8(job: "ExportJob", backend: str, tries: Sequence[Try[Candidate]],
                 runner: Callable[[Candidate], Runner],
                 keep_float: Callable[[str], Iterable[Try[Candidate]]]) -> tuple[Candidate, dict[str, Any]]:
    """The first candidate within the job's --max-drop and its record; raises RefusedError when none holds.

    `tries` are the backend's calibrations; `runner` turns a candidate into a validation runner;
    `keep_float(calibrator)` yields the fallback candidates of the best calibrator, fewest layers
    in float first, and builds each only when it is reached.
    """
    search = Search(job, backend)
    for attempt in tries:
        candidate = _calibrate(search, attempt, runner)
        if candidate is not None:
            return candidate, search.record(attempt.calibrator, [])
    for attempt in keep_float(search.best()["calibrator"]):
        candidate, kept = attempt.build(), list(attempt.kept)
        if search.measure(runner(candidate), attempt.calibrator, kept):
            return candidate, search.record(attempt.calibrator, kept)
    search.refuse()


def _calibrate(search: Search, attempt: Try[Candidate], runner: Callable[[Candidate], Runner]) -> Candidate | None:
    """The candidate of one calibration try when it holds the bound; None when it does not (or was skipped)."""
    try:
        candidate = attempt.build()
        return candidate if search.measure(runner(candidate), attempt.calibrator, []) else None
    except Exception as exc:  # noqa: BLE001 - a calibrator that fails on this graph is skipped
        if not attempt.skippable:
            raise
        log.warning("%s %s calibration failed on this model (%s); skipped", search.backend, attempt.calibrator, exc)
        search.failed(attempt.calibrator, exc)
        return None
