"""The whole line as one library call: pre-flight → compress → export → profile → precision policy →
report/cards → gate (DESIGN.md §Layout).

`edgeft compress` calls `run_line` once; `edgeft profile` calls `profile`, `edgeft report` calls
`report_run`, and `profile --rebuild` calls `rebuild`: the line's own stations. Every request is
checked before training (`check`): an unknown --method, --target or --format and a bad --fail-if
fail in a second, and the pre-flight exports the untrained student, so that an operator it cannot
export fails before hours of distillation. The torch stack (edgeft.compress, edgeft.export) is
imported inside the stations that use it, after those checks, so that they answer without it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgeft.compress.packaged import refuse_without_copy
from edgeft.config import CompressConfig
from edgeft.errors import ConfigError
from edgeft.gate import Gate, for_command, run_rows
from edgeft.modelcard import write_cards
from edgeft.precision_policy import annotate, apply_policy
from edgeft.report import Report, write_report
from edgeft.runtime import target_formats
from edgeft.runtime.dispatch import is_run_dir, profile_on_target
from edgeft.runtime.profile import ProfileConfig
from edgeft.targets import get_target

if TYPE_CHECKING:
    from edgeft.export import ExportResult, Preflight

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")


def _drop(_: Any) -> None:
    """A Show hook that shows nothing."""


@dataclass(frozen=True)
class Show:
    """Where each station's result goes as soon as it is ready (the CLI prints them; by default nothing)."""

    preflight: Callable[[Preflight], None] = _drop
    summary: Callable[[dict], None] = _drop
    exports: Callable[[ExportResult], None] = _drop
    report: Callable[[Report], None] = _drop
    gate: Callable[[str], None] = _drop


def run_line(cfg: CompressConfig, explicit: dict | None = None, *, fail_if: str | None = None,
             strict: bool = False, progress: Callable[[], Any] | None = None, show: Show = Show()) -> dict:
    """Walks the whole line for `cfg` and returns summary.json's content.

    `explicit` holds the options given on the command line (checked against a --resume's saved
    run); `progress` makes the training loop's progress sink. With formats, the trained student is
    exported (a refused engine is listed, `strict` makes it exit 4); with a target, every engine is
    profiled there, lower precisions are kept only where faster, and the report and cards are
    written; `fail_if` is the CI gate judged last (GateFailed, exit 3).
    """
    cfg, gate = check(cfg, fail_if)
    checked = preflight_student(cfg) if cfg.formats else None
    if checked is not None:
        show.preflight(checked)
    from edgeft.compress.pipeline import run_compress

    summary = run_compress(cfg, explicit, **({"progress": progress} if progress else {}))
    show.summary(summary)
    exported = export_student(cfg, checked.opset) if checked is not None else None
    if exported is not None:
        show.exports(exported)
    if cfg.target:  # profile, report and cards cover the engines that passed
        show.report(profile_and_report(cfg.out, cfg.target))
    if exported is not None:
        exported.check(strict)
    if gate is not None:
        show.gate(gate.judge(run_rows(cfg.out, cfg.target, bool(cfg.formats))))
    return summary


def check(cfg: CompressConfig, fail_if: str | None = None) -> tuple[CompressConfig, Gate | None]:
    """Checks the request before training (the method was checked by its config): a packaged teacher with no copy
    here (refused before torch is imported), the target (whose formats and precisions fill those not given),
    --fail-if and the export request, which also fixes the run directory."""
    if not cfg.teacher_weights and not cfg.teacher_from:
        for name in cfg.teacher:
            refuse_without_copy(name, "teacher")
    if cfg.target:
        cfg = with_target_exports(cfg)
    gate = for_command(fail_if, "compress", exported=bool(cfg.formats), target=cfg.target) if fail_if else None
    if cfg.formats:
        cfg = _checked_exports(cfg)
    return cfg, gate


def with_target_exports(cfg: CompressConfig) -> CompressConfig:
    """Fills --format/--precision from the target (its runtimes' formats, its precisions) unless given."""
    try:
        target = get_target(cfg.target)
    except ConfigError as exc:
        raise ConfigError(f"--target {cfg.target}: {exc}; list them with `edgeft targets`") from None
    formats = cfg.formats or tuple(target_formats(target))
    precisions = cfg.precisions or tuple(p for p in target.precisions if p in EXPORT_PRECISIONS)
    return dataclasses.replace(cfg, target=target.name, formats=formats, precisions=precisions)


def _checked_exports(cfg: CompressConfig) -> CompressConfig:
    """Checks the export request and fixes the run directory that the export will read."""
    from edgeft.compress.pipeline import prepare_run
    from edgeft.export import check_request
    from edgeft.export.int8_guard import check_max_drop

    formats, precisions = check_request(cfg.formats, cfg.precisions or ("fp32",))
    check_max_drop(cfg.max_drop)
    out = cfg.out or str(prepare_run(cfg, {})[1].root)
    return dataclasses.replace(cfg, formats=tuple(formats), precisions=tuple(precisions), out=out)


def preflight_student(cfg: CompressConfig) -> Preflight:
    """Exports the untrained student of `cfg` to its formats before training (edgeft.export.preflight).

    The student and image size are resolved as `edgeft compress` resolves them
    (`student_image_size`); returns the Preflight, whose opset the export uses.
    """
    from edgeft.compress.data import open_image_folder
    from edgeft.compress.models import resolve
    from edgeft.compress.pipeline import student_image_size
    from edgeft.export import BatchShape, run_preflight

    size = cfg.image_size
    if size is None:
        teachers = [resolve(cfg.teacher[0], None, role="teacher")] if cfg.teacher else []
        size = student_image_size(cfg, teachers, open_image_folder(cfg.data, cfg.val_fraction, cfg.classes))
    arch = resolve(cfg.student, None, role="student").arch
    return run_preflight(arch, cfg.formats, (3, size, size), BatchShape.parse(profile=cfg.batch_profile))


def export_student(cfg: CompressConfig, opset: int | None = None) -> ExportResult:
    """Exports the trained student of `cfg.out` to its formats × precisions (edgeft.export.export_run)."""
    from edgeft.export import BatchShape, export_run

    return export_run(cfg.out, cfg.formats, cfg.precisions, batch=BatchShape.parse(profile=cfg.batch_profile),
                      opset=opset, max_drop=cfg.max_drop)


def profile(engine: str | Path, target: str = "host", backend: str | None = None,
            cfg: ProfileConfig = ProfileConfig(), precision: str | None = None,
            remote: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """Profiles an engine file or every engine of a run on `target`; for a run, each lower precision
    is then kept only where it is faster there (marked in its profiles and export manifest)."""
    records = profile_on_target(engine, target, backend=backend, cfg=cfg, precision=precision, remote=remote,
                                token=token)
    if is_run_dir(Path(engine)):
        annotate(records, apply_policy(engine, target))
    return records


def report_run(run_dir: str | Path) -> Report:
    """Writes the run's report (report.md, report.html) and a model card per profiled target."""
    report = write_report(run_dir)
    report.cards = write_cards(run_dir)
    return report


def profile_and_report(run_dir: str | Path, target: str, cfg: ProfileConfig = ProfileConfig()) -> Report:
    """Profiles every engine of the run on `target` (precision policy included), then writes the
    report and the model cards."""
    profile(run_dir, target, cfg=cfg)
    return report_run(run_dir)


def rebuild(run_dir: str | Path, run: bool, remote: str | None = None) -> ExportResult:
    """`profile --rebuild`: re-exports here the run's engines whose fingerprint does not fit this machine."""
    if not run or remote:
        raise ConfigError("--rebuild: pass a run directory profiled on this machine (without --remote); "
                          "on a device, run `edgeft profile RUN --rebuild` there")
    from edgeft.export import rebuild_stale

    return rebuild_stale(run_dir)
