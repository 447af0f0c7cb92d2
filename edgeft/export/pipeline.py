"""`edgeft export`: every requested format × precision of a run's student, validated, in engines/."""
from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Iterable, Sequence

from edgeft import artifacts
from edgeft.artifacts import RunDir
from edgeft.errors import ConfigError, EdgeftError
from edgeft.export.base import EXPORTERS, PRECISIONS, BatchShape, ExportJob, ExportRecord, load_student
from edgeft.export.int8_guard import check_max_drop
from edgeft.export.onnx import load_onnx, onnx_opset
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
) -> list[ExportRecord]:
    """Exports and validates the run's student in every format × precision.

    Engines go to `<run>/engines/<format>/`, the records to `<run>/export.json` (merged with
    earlier exports of other formats/precisions). `calib` training images calibrate INT8,
    up to `images` held-out images validate; `onnx` starts from a given fp32 ONNX file instead
    of exporting the student again. `batch` is static 1 unless given a profile (BatchShape.parse);
    `opset` defaults to the highest the formats' runtimes read (preflight.pick_opset). A failed
    validation deletes that engine and raises, after the records of the engines that passed are written.
    `max_drop` bounds INT8's accuracy loss in points (int8_guard.py: other calibrators, then layers
    kept in float, else INT8 is refused).
    """
    formats, precisions = check_request(formats, precisions)
    if "int8" in precisions and calib < 1:
        raise ConfigError(f"--calib {calib}: int8 needs calibration images; pass --calib N with N >= 1 (e.g. 256)")
    if images < 1:
        raise ConfigError(f"--images {images}: validation needs at least one held-out image")
    check_max_drop(max_drop)
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise EdgeftError(f"{run.root}: no such run directory")
    card, model = load_student(run)
    source = Path(onnx) if onnx else None
    if source is not None:
        opset = onnx_opset(load_onnx(source, card))
    calibration = cache(lambda: calibration_images(run, card, calib))
    if "int8" in precisions:
        calibration()  # a run without usable training images fails before any engine is built
    reference = build_reference(run, card, model, images)
    records: list[ExportRecord] = []
    with tempfile.TemporaryDirectory(prefix="edgeft-export-") as workdir:
        job = ExportJob(run, card, model, reference, Path(workdir), calibration, source, batch=batch,
                        opset=opset or pick_opset(formats), max_drop=max_drop)
        try:
            for name in formats:
                exporter = EXPORTERS.get(name)()
                for precision in precisions:
                    records.append(exporter.export(job, precision))
        finally:
            write_records(run, records)
    return records


def write_records(run: RunDir, records: list[ExportRecord]) -> Path:
    """Merges `records` into export.json, dropping earlier records whose engine is gone or replaced."""
    path = run.root / "export.json"
    fresh = {(r.format, r.precision) for r in records}
    kept = []
    if path.exists():
        for row in artifacts.read_json(path).get("engines", []):
            if (row.get("format"), row.get("precision")) not in fresh and (run.root / row.get("path", "")).is_file():
                kept.append(row)
    rows = kept + [r.to_json() for r in records]
    return artifacts.write_json(path, {
        "run": str(run.root),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engines": rows,
    })


def read_records(run_dir: str | Path) -> list[ExportRecord]:
    """The engines recorded in a run's export.json (empty when nothing was exported)."""
    path = RunDir(run_dir).root / "export.json"
    if not path.exists():
        return []
    return [ExportRecord.from_json(row) for row in artifacts.read_json(path).get("engines", [])]


def rebuild_stale(run_dir: str | Path) -> list[ExportRecord]:
    """Re-exports here every engine of the run whose fingerprint does not fit this machine.

    `edgeft profile RUN --rebuild` calls it before profiling; each engine keeps its format,
    precision and batch profile, and gets the opset this machine's runtimes read.
    """
    path = RunDir(run_dir).root / "export.json"
    rows = artifacts.read_json(path).get("engines", []) if path.exists() else []
    records: list[ExportRecord] = []
    for row in rows:
        reasons = stale_reasons(row)
        if reasons:
            log.warning("rebuilding %s on this machine (%s)", row["path"], "; ".join(reasons))
            records += export_run(run_dir, [row["format"]], [row["precision"]],
                                  batch=BatchShape.from_json(row.get("batch", 1)),
                                  max_drop=(row.get("quantization") or {}).get("max_drop"))
    return records
