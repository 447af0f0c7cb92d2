"""`edgeft profile ENGINE|RUN_DIR --target T`: measure here, on a device's agent, or estimate.

`host` is measured on this machine; `--remote URL` ships engines to an agent on the device
(measured there); any other target is estimated from the ONNX graph (labelled so). For a
run directory every engine in its export manifest is handled and the records are written to
`profiles/<target>.json`, which the report reads.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeft.artifacts import ExportManifest, ProfileManifest, RunDir
from edgeft.errors import EdgeftError
from edgeft.runtime import BACKENDS, FORMAT_BACKEND, backend_for, format_of, target_formats
from edgeft.runtime.agent import profile_remote
from edgeft.runtime.base import precision_from_name
from edgeft.runtime.fingerprint import check_engine
from edgeft.runtime.profile import ProfileConfig, profile_engine
from edgeft.targets import Target, get_target
from edgeft.targets.estimate import estimate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRef:
    """One engine of a run: its file, format, precision, validated accuracy and batch axis."""

    path: Path
    format: str
    precision: str
    accuracy: float | None = None
    batch: int | dict | None = None  # the export record's: a static batch or the profile {min, opt, max}


def run_engines(run_dir: Path) -> list[EngineRef]:
    """The student (torch) and every exported engine file in the run's export manifest."""
    refs = []
    run = RunDir(run_dir)
    if run.student_card.is_file():
        refs.append(EngineRef(run_dir, "torch", "fp32", run.read_summary().get("student", {}).get("accuracy")))
    for row in ExportManifest.read(run_dir).engines:
        path = run_dir / row["path"]
        if path.is_file():
            refs.append(EngineRef(path, row["format"], row["precision"], row.get("accuracy"), row.get("batch")))
    return refs


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory (a trained student or exported engines), not an engine."""
    return RunDir(path).is_run()


def profile_on_target(path: str | Path, target: str = "host", backend: str | None = None,
                      cfg: ProfileConfig = ProfileConfig(), precision: str | None = None,
                      remote: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """Profile records for an engine file or a whole run on `target` (see the module doc)."""
    path, tgt = Path(path), get_target(target)
    backend = BACKENDS.canonical(backend) if backend else None
    if remote and not token:
        raise EdgeftError("--remote needs --token (the one the agent was started with)")
    run = is_run_dir(path)
    if run:
        refs = [r for r in run_engines(path) if backend is None or FORMAT_BACKEND[r.format] == backend]
        if not refs:
            raise EdgeftError(f"{path}: no {backend or 'engine'} to profile; run `edgeft export {path}` first")
    elif path.is_file() or path.is_dir():
        refs = [EngineRef(path, format_of(backend_for(path)), precision_from_name(path) or "fp32")]
    else:
        raise EdgeftError(f"{path}: no such engine file or run directory")
    if remote:
        records = _remote(refs, tgt, backend, cfg, remote, token)
    elif tgt.measured:
        records = _measure(refs, backend, cfg, precision, strict=not run)
    else:
        records = _estimate(refs, tgt, backend, precision)
    for record in records:
        record.setdefault("target", tgt.name)
        if run:  # run-relative, so that re-profiling replaces the same records
            relative = Path(os.path.relpath(Path(record["engine"]).resolve(), path.resolve())).as_posix()
            record["engine"] = "student" if relative == "." else relative
    if run:
        save_records(path, tgt.name, records)
    return records


def _key(record: dict) -> tuple:
    return record.get("engine"), record.get("backend"), record.get("precision"), record.get("label")


def save_records(run_dir: Path, target: str, records: list[dict]) -> Path:
    """Writes the run's profile file of `target`, replacing earlier records of the same engine/backend/precision."""
    old = ProfileManifest.read(run_dir, target).records
    fresh = {_key(r) for r in records}
    return ProfileManifest(target, [r for r in old if _key(r) not in fresh] + records).write(run_dir)


def _annotate(record: dict, ref: EngineRef) -> dict:
    record.update(engine=str(ref.path), format=ref.format, accuracy=ref.accuracy)
    record["precision"] = record.get("precision") or ref.precision
    return record


def _measure(refs: list[EngineRef], backend: str | None, cfg: ProfileConfig, precision: str | None,
             strict: bool) -> list[dict]:
    chosen = []
    for ref in refs:
        name = backend or FORMAT_BACKEND[ref.format]
        if ref.format == "tensorrt" and ref.path.suffix == ".onnx" and not backend:
            continue  # a device-side build recipe, not an engine for this machine
        if not BACKENDS.get(name).available() and not strict:
            log.warning("skipping %s: %s is not installed here", ref.path.name, name)
            continue
        chosen.append((ref, name))
    for ref, name in chosen:  # every fingerprint before the first measurement: a mismatch fails in a second
        check_engine(ref.path, name)
    return [_annotate(profile_engine(ref.path, name, _batch_config(cfg, ref), precision=precision), ref)
            for ref, name in chosen]


def _batch_config(cfg: ProfileConfig, ref: EngineRef) -> ProfileConfig:
    """A run engine's recorded batch axis: its profile points are swept exactly, a static batch is measured as is."""
    if isinstance(ref.batch, dict):
        low, opt, high = ref.batch["min"], ref.batch["opt"], ref.batch["max"]
        return replace(cfg, points=(low, opt, high), batch=cfg.batch if low <= cfg.batch <= high else opt)
    if isinstance(ref.batch, int) and ref.batch != cfg.batch:
        return replace(cfg, batch=ref.batch)
    return cfg


def _remote(refs: list[EngineRef], tgt: Target, backend: str | None, cfg: ProfileConfig, url: str,
            token: str) -> list[dict]:
    records = []
    for ref in refs:
        name = backend or FORMAT_BACKEND[ref.format]
        if ref.format == "torch" or (not backend and name not in tgt.backends and tgt.name != "host"):
            continue
        records.append(_annotate(profile_remote(ref.path, url, token, name, _batch_config(cfg, ref)), ref))
    if not records:
        raise EdgeftError(f"--remote: no engine for {tgt.name}'s runtimes ({', '.join(tgt.backends)}); "
                          f"export one with `edgeft export --format {','.join(target_formats(tgt))}`")
    return records


def _estimate(refs: list[EngineRef], tgt: Target, backend: str | None, precision: str | None) -> list[dict]:
    """One estimate per target precision, each from the ONNX of that precision (else the fp32 one)."""
    onnx = {r.precision: r for r in refs if r.path.suffix == ".onnx"}
    if not onnx:
        raise EdgeftError(f"estimates for {tgt.name} need the ONNX graph; pass the .onnx file or a run "
                          "directory exported with --format onnx")
    backend = backend or tgt.backends[0]
    records = []
    for p in [precision] if precision else tgt.precisions:
        exact = onnx.get(p)
        ref = exact or onnx.get("fp32") or next(iter(onnx.values()))
        record = estimate(ref.path, tgt, backend, p)
        records.append(_annotate(record, EngineRef(ref.path, format_of(backend), p, exact.accuracy if exact else None)))
    return records
