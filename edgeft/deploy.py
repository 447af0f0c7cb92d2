"""`edgeft compress --target T`: the target's exports, then its profiles and the run's report.

The exports themselves run in `edgeft.export.export_run` (called by the CLI with the
formats/precisions chosen here); this module picks them from the target and, after the
export, profiles the run on the target (measured on `host`, estimated elsewhere) and writes
report.md / report.html. Before training, `preflight_student` exports the untrained student
to those formats (edgeft.export.preflight), so that an unsupported operator fails in seconds.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.config import CompressConfig
from edgeft.errors import ConfigError
from edgeft.report import Report, write_report
from edgeft.runtime.dispatch import profile_on_target
from edgeft.runtime.profile import ProfileConfig
from edgeft.targets import get_target

if TYPE_CHECKING:
    from edgeft.export import Preflight

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")


def with_target_exports(cfg: CompressConfig) -> CompressConfig:
    """Fills --format/--precision from the target (its runtimes' formats, its precisions) unless given."""
    try:
        target = get_target(cfg.target)
    except ConfigError as exc:
        raise ConfigError(f"--target {cfg.target}: {exc}; list them with `edgeft targets`") from None
    formats = cfg.formats or tuple(target.formats())
    precisions = cfg.precisions or tuple(p for p in target.precisions if p in EXPORT_PRECISIONS)
    return dataclasses.replace(cfg, target=target.name, formats=formats, precisions=precisions)


def profile_and_report(run_dir: str | Path, target: str, cfg: ProfileConfig = ProfileConfig()) -> Report:
    """Profiles every engine of the run on `target` (profiles/<target>.json), keeps each lower precision
    only where it is faster there, then writes the report and the model cards."""
    from edgeft.modelcard import write_cards
    from edgeft.precision_policy import apply_policy

    profile_on_target(run_dir, target, cfg=cfg)
    apply_policy(run_dir, target)
    report = write_report(run_dir)
    report.cards = write_cards(run_dir)
    return report


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
