"""`edgeft compress --target T`: the target's exports, then its profiles and the run's report.

The exports themselves run in `edgeft.export.export_run` (called by the CLI with the
formats/precisions chosen here); this module picks them from the target and, after the
export, profiles the run on the target (measured on `host`, estimated elsewhere) and writes
report.md / report.html.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeft.config import CompressConfig
from edgeft.report import Report, write_report
from edgeft.runtime.dispatch import profile_on_target
from edgeft.runtime.profile import ProfileConfig
from edgeft.targets import get_target

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")


def with_target_exports(cfg: CompressConfig) -> CompressConfig:
    """Fills --format/--precision from the target (its runtimes' formats, its precisions) unless given."""
    target = get_target(cfg.target)
    formats = cfg.formats or tuple(target.formats())
    precisions = cfg.precisions or tuple(p for p in target.precisions if p in EXPORT_PRECISIONS)
    return dataclasses.replace(cfg, target=target.name, formats=formats, precisions=precisions)


def profile_and_report(run_dir: str | Path, target: str, cfg: ProfileConfig = ProfileConfig()) -> Report:
    """Profiles every engine of the run on `target` (profiles/<target>.json), then writes the report."""
    profile_on_target(run_dir, target, cfg=cfg)
    return write_report(run_dir)
