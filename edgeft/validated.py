"""Which profiled engines were validated against PyTorch: a profile record joined with the export manifest.

The export manifest (artifacts.ExportManifest) lists the engines that passed validation
(`engines`) and the format × precision pairs that were refused, with the reason (`refused`,
edgeft.export.pipeline). A model card recommends, and the report shows, only what this module
calls validated or an estimate of a validated graph; a refused precision is shown by its reason
alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.artifacts import ExportManifest

NOT_BUILT = "estimate; engine not built here"


@dataclass(frozen=True)
class Exports:
    """A run's export manifest: passed rows by (format, precision), refusal reasons by (format, precision)."""

    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: str | Path) -> "Exports":
        """The run's export manifest, keyed by (format, precision)."""
        manifest = ExportManifest.read(run_dir)
        return cls(manifest.by_key(), manifest.reasons())

    def validation(self, record: dict) -> tuple[dict[str, Any], str]:
        """The export manifest row that validates a profile record's engine, and its status in words.

        A measured engine is validated by its own row; an estimate by the row of its format and
        precision, else by the validated ONNX of that precision it was estimated from. Without
        one the status says why: refused (with the manifest's reason) or never exported.
        """
        key = (record.get("format"), record.get("precision"))
        if record.get("format") == "torch":
            return {}, "reference"
        row = self.rows.get(key) or next((r for r in self.rows.values() if r.get("path") == record.get("engine")
                                          and r.get("precision") == record.get("precision")), None)
        if row is None:
            reason = self.refused.get(key) or self.refused.get(("onnx", key[1]))
            return {}, f"refused: {reason}" if reason else "not validated: no engine of this precision was exported"
        if record.get("label") == "estimated" or row.get("skipped"):
            return row, f"validated ONNX graph; {NOT_BUILT}"
        return row, "validated"

    def is_refused(self, record: dict) -> bool:
        """Whether the record is of a precision refused at export (it is then shown by its reason only)."""
        return self.validation(record)[1].startswith("refused")
