"""`edgeft export`: every requested format × precision of a run's student, validated, in engines/."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgeft.artifacts import ExportManifest, RunDir, StudentCard
from edgeft.errors import ConfigError, EdgeftError, StrictError
from edgeft.export.base import (EXPORTERS, PRECISIONS, BatchShape, Exporter, ExportJob, ExportRecord,
                                load_student)
from edgeft.export.int8_guard import check_max_drop
from edgeft.export.onnx import export_failure, load_onnx, onnx_opset
from edgeft.export.preflight import pick_opset
from edgeft.export.quantize import calibration_images
from edgeft.export.validate import build_reference
from edgeft.registry import unknown_name_message
from edgeft.runtime.fingerprint import stale_reasons

log = logging.getLogger(__name__)

DEFAULT_CALIB = 256
DEFAULT_IMAGES = 512


def check_request(formats: Iterable[str], precisions: Iterable[str]) -> tuple[list[str], list[str]]:
    """Canonical format and precision names; unknown ones fail before any work starts."""
    formats = list(dict.fromkeys(EXPORTERS.canonical(f.strip().lower()) for f in formats if f.strip()))
    precisions = [p.strip().lower() for p in precisions if p.strip()]
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError("--precision: " + unknown_name_message("precision", precision, list(PRECISIONS)))
    if not formats:
        raise ConfigError(f"--format: name at least one of {', '.join(EXPORTERS.names())}")
    if not precisions:
        raise ConfigError(f"--precision: name at least one of {', '.join(PRECISIONS)}")
    return formats, list(dict.fromkeys(precisions))


@dataclass(frozen=True)
class Refusal:
    """One requested engine that was not made: it failed validation or its conversion/quantiser failed."""

    format: str
    precision: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ExportResult:
    """What one export made: the engines that passed and the (format, precision) pairs refused."""

    requested: list[tuple[str, str]]  # (format, precision) in the order they were tried
    records: list[ExportRecord] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def outcomes(self) -> list[dict[str, Any]]:
        """One row per requested (format, precision): status passed | refused | skipped, why, its record."""
        records = {(r.format, r.precision): r for r in self.records}
        refused = {(r.format, r.precision): r.reason for r in self.refused}
        rows = []
        for key in self.requested:
            record = records.get(key)
            if record is not None:
                status, why = ("skipped", record.skipped) if record.skipped else ("passed", "")
            else:
                status, why = "refused", refused[key]
            rows.append({"format": key[0], "precision": key[1], "status": status, "why": why, "record": record})
        return rows

    def check(self, strict: bool = False) -> None:
        """Raises when a requested format has no engine that passed, or (`strict`) when any was refused."""
        formats = dict.fromkeys(f for f, _ in self.requested)
        missing = [f for f in formats if not any(r.format == f for r in self.records)]
        reasons = "; ".join(f"{r.format} {r.precision}: {r.reason}" for r in self.refused)
        if missing:
            raise EdgeftError(f"no {', '.join(missing)} engine passed ({reasons}); the table above says why")
        if strict and self.refused:
            raise StrictError(f"--strict: {len(self.refused)} engine(s) refused ({reasons})")


def export_run(
    run_dir: str | Path,
    formats: Sequence[str] = ("onnx",),
    precisions: Sequence[str] = ("fp32",),
    calib: int = DEFAULT_CALIB,
    images: int = DEFAULT_IMAGES,
    onnx: str | Path | None = None,
    batch: BatchShape = BatchShape(),
    opset: int | None = None,
    max_drop: float | None = None,
) -> ExportResult:
    """Exports and validates the run's student in every format × precision, each on its own.

    Engines go to `<run>/engines/<format>/`, the records to the run's export manifest (merged with
    earlier exports of other formats/precisions). `calib` training images calibrate INT8,
    up to `images` held-out images validate; `onnx` starts from a given fp32 ONNX file instead
    of exporting the student again. `batch` is static 1 unless given a profile (BatchShape.parse);
    `opset` defaults to the highest the formats' runtimes read (preflight.pick_opset). An engine
    that fails validation, or whose conversion or quantiser fails, is deleted and recorded as
    refused (the manifest's `refused`, with the reason) and the others go on; `ExportResult.check`
    says whether that is acceptable. `max_drop` bounds INT8's accuracy loss in points
    (int8_guard.bounded_int8: other calibrators, then layers kept in float, else INT8 is refused).
    """
    formats, precisions = check_request(formats, precisions)
    _check_counts(precisions, calib, images, max_drop)
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise EdgeftError(f"{run.root}: no such run directory")
    card, model = load_student(run)
    source = Path(onnx) if onnx else None
    if source is not None:
        opset = onnx_opset(load_onnx(source, card))
    calibration = _calibration(run, card, calib, precisions)
    reference = build_reference(run, card, model, images)
    result = ExportResult([(f, p) for f in formats for p in precisions])
    with tempfile.TemporaryDirectory(prefix="edgeft-export-") as workdir:
        job = ExportJob(run, card, model, reference, Path(workdir), calibration, source, batch=batch,
                        opset=opset or pick_opset(formats), max_drop=max_drop)
        _export_all(job, formats, precisions, result)
    return result


def _check_counts(precisions: Sequence[str], calib: int, images: int, max_drop: float | None) -> None:
    """The image counts and --max-drop fail before any work starts."""
    if "int8" in precisions and calib < 1:
        raise ConfigError(f"--calib {calib}: int8 needs calibration images; pass --calib N with N >= 1 (e.g. 256)")
    if images < 1:
        raise ConfigError(f"--images {images}: validation needs at least one held-out image")
    check_max_drop(max_drop)


def _calibration(run: RunDir, card: StudentCard, calib: int, precisions: Sequence[str]) -> Callable[[], np.ndarray]:
    """The calibration images, read on first use; read now for int8, so that a run without usable
    training images fails before any engine is built."""
    calibration = cache(lambda: calibration_images(run, card, calib))
    if "int8" in precisions:
        calibration()
    return calibration


def _export_all(job: ExportJob, formats: Sequence[str], precisions: Sequence[str], result: ExportResult) -> None:
    """Every format × precision into `result`; the export manifest is written even when one raises."""
    try:
        for name in formats:
            exporter = EXPORTERS.get(name)()
            for precision in precisions:
                _export_one(exporter, name, job, precision, result)
    finally:
        write_records(job.run, result.records, result.refused)


def _export_one(exporter: Exporter, name: str, job: ExportJob, precision: str, result: ExportResult) -> None:
    """Exports one engine into `result`: its record, or its refusal (the other engines go on)."""
    try:
        result.records.append(exporter.export(job, precision))
    except EdgeftError as exc:  # this engine alone is refused; the others go on
        log.info("%s %s refused: %s", name, precision, exc)
        result.refused.append(Refusal(name, precision, str(exc)))
    except Exception as exc:  # noqa: BLE001 - a converter's own error (e.g. OpenVINO's
        # OpConversionFailure) refuses this engine too, with its one-line summary
        log.info("%s %s refused: %s", name, precision, exc, exc_info=True)
        why = f"{name} {precision}: the conversion failed ({type(exc).__name__}: {export_failure(exc)})"
        result.refused.append(Refusal(name, precision, why))


def write_records(run: RunDir, records: list[ExportRecord], refused: Sequence[Refusal] = ()) -> Path:
    """Merges `records` and `refused` into the export manifest, dropping earlier rows whose engine is gone or replaced."""
    fresh = {(r.format, r.precision) for r in [*records, *refused]}
    old = ExportManifest.read(run.root)
    kept = [row for row in old.engines
            if (row.get("format"), row.get("precision")) not in fresh and (run.root / row.get("path", "")).is_file()]
    kept_refused = [row for row in old.refused if (row.get("format"), row.get("precision")) not in fresh]
    return ExportManifest(kept + [r.to_json() for r in records], kept_refused + [r.to_json() for r in refused],
                          str(run.root), datetime.now(timezone.utc).isoformat(timespec="seconds")).write(run.root)


def read_records(run_dir: str | Path) -> list[ExportRecord]:
    """The engines recorded in a run's export manifest (empty when nothing was exported)."""
    return [ExportRecord.from_json(row) for row in ExportManifest.read(run_dir).engines]


def rebuild_stale(run_dir: str | Path) -> ExportResult:
    """Re-exports here every engine of the run whose fingerprint does not fit this machine.

    `edgeft profile RUN --rebuild` calls it before profiling; each engine keeps its format,
    precision and batch profile, and gets the opset this machine's runtimes read.
    """
    rebuilt = ExportResult([])
    for row in ExportManifest.read(run_dir).engines:
        reasons = stale_reasons(row)
        if reasons:
            log.warning("rebuilding %s on this machine (%s)", row["path"], "; ".join(reasons))
            one = export_run(run_dir, [row["format"]], [row["precision"]],
                             batch=BatchShape.from_json(row.get("batch", 1)),
                             max_drop=(row.get("quantization") or {}).get("max_drop"))
            rebuilt.requested += one.requested
            rebuilt.records += one.records
            rebuilt.refused += one.refused
    return rebuilt
