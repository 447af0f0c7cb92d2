"""A lower precision is kept only where it is faster (ECOSYSTEM.md pain point 4).

Per target and engine format, each precision's batch-1 p50 is compared with the next higher
precision that is itself kept (fp16 vs fp32; int8 vs fp16, or vs fp32 where fp16 is absent
or dropped); it is kept only at >= 1.02x (NVIDIA Model Optimizer's rule). Measured targets
decide from measurements, other targets from the estimate, and each decision says which.

Dropped engines keep their files: the decision is per target (INT8 may lose on this host and
win on a Pi 5), a marginal call can flip when re-measured on a quiet machine, and the file is
already validated. The manifests mark them instead: the profile record gets
`precision_check`, the export manifest row `speed_check[target]`, `kept` and `dropped_because`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeft.artifacts import ExportManifest, ProfileManifest, RunDir
from edgeft.figures import batch_of
from edgeft.runtime import FORMAT_BACKEND
from edgeft.targets import get_target

ORDER = ("fp32", "fp16", "int8")  # highest precision first
MIN_SPEEDUP = 1.02


@dataclass(frozen=True)
class Decision:
    """Whether one precision of one format is kept on one target, and why."""

    target: str
    format: str
    backend: str
    precision: str
    how: str  # measured | estimated
    p50_ms: float
    kept: bool
    reason: str
    vs: str | None = None  # the higher precision it was compared with
    vs_p50_ms: float | None = None
    speedup: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(records: list[dict], min_speedup: float = MIN_SPEEDUP) -> list[Decision]:
    """Decisions for every batch-1 record with a p50 (pure: reads only the records)."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        p50 = (r.get("latency_ms") or {}).get("p50")
        if batch_of(r) == 1 and isinstance(p50, (int, float)) and r.get("precision") in ORDER:
            key = (r.get("target", ""), r.get("format", ""), r.get("backend", ""), r.get("label", "measured"))
            groups.setdefault(key, {})[r["precision"]] = r
    decisions = []
    for (target, fmt, backend, how), by_precision in groups.items():
        ref: Decision | None = None
        for precision in (p for p in ORDER if p in by_precision):
            p50 = float(by_precision[precision]["latency_ms"]["p50"])
            if ref is None:
                decision = Decision(target, fmt, backend, precision, how, p50, True,
                                    f"{precision}: the highest precision {how} on {target}, the baseline")
            else:
                speedup = ref.p50_ms / p50 if p50 > 0 else float("inf")
                kept = speedup >= min_speedup
                reason = (f"{'estimated: ' if how == 'estimated' else ''}{precision} {speedup:.2f}x vs {ref.precision} "
                          f"on {target} (p50 {p50:.3g} ms vs {ref.p50_ms:.3g} ms), "
                          f"{'at least' if kept else 'below'} {min_speedup:g}x")
                decision = Decision(target, fmt, backend, precision, how, p50, kept, reason, ref.precision,
                                    ref.p50_ms, round(speedup, 4))
            decisions.append(decision)
            if decision.kept:
                ref = decision
    return decisions


def annotate(records: list[dict], decisions: list[Decision]) -> list[dict]:
    """Sets `precision_check` on the batch-1 records that `decisions` judged (in place)."""
    by_key = {(d.target, d.format, d.backend, d.precision, d.how): d for d in decisions}
    for r in records:
        d = by_key.get((r.get("target", ""), r.get("format", ""), r.get("backend", ""), r.get("precision"),
                        r.get("label", "measured")))
        if d is not None and batch_of(r) == 1:
            r["precision_check"] = d.to_json()
    return records


def _check_key(decision: Decision) -> str:
    """The export manifest row's speed_check key: the target, plus the backend when it is not the format's own."""
    own = FORMAT_BACKEND.get(decision.format) == decision.backend
    return decision.target if own else f"{decision.target} ({decision.backend})"


def apply_policy(run_dir: str | Path, target: str, min_speedup: float = MIN_SPEEDUP) -> list[Decision]:
    """Decides on the run's profiles for `target`; marks its profile records and export manifest rows."""
    run, name = RunDir(run_dir), get_target(target).name
    if not run.profile(name).exists():
        return []
    profile = ProfileManifest.read(run_dir, name)
    decisions = decide(profile.records, min_speedup)
    annotate(profile.records, decisions)
    profile.write(run_dir)
    if run.export_manifest.exists():
        manifest = ExportManifest.read(run_dir)
        for row in manifest.engines:
            _mark(row, decisions)
        manifest.write(run_dir)
    return decisions


def _mark(row: dict, decisions: list[Decision]) -> None:
    """Records the decisions on one export manifest row: speed_check per target, kept, dropped_because."""
    for d in decisions:
        if (row.get("format"), row.get("precision")) == (d.format, d.precision):
            row.setdefault("speed_check", {})[_check_key(d)] = d.to_json()
    checks = row.get("speed_check") or {}
    if checks:
        row["kept"] = all(c["kept"] for c in checks.values())
        dropped = [c["reason"] for c in checks.values() if not c["kept"]]
        row["dropped_because"] = "; ".join(dropped) if dropped else None


def dropped(record: dict) -> bool:
    """Whether a profile record's engine was dropped as not faster on its target."""
    return (record.get("precision_check") or {}).get("kept") is False
