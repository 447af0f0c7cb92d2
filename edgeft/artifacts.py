"""Run-directory layout, atomic writes and the manifests that stages exchange.

Stages talk only through the run directory (DESIGN.md §House style 2). Every file is
written to a temporary sibling and renamed into place, so a killed run never leaves a
half-written file that a later step would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from edgeft.errors import EdgeftError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls `write(tmp_path)` and renames the result onto `path` (same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cache_key(*parts: str) -> str:
    """A short stable name for what a run caches under cache/ (features, images) from (model, weights, data)."""
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically writes bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically writes indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    """Atomically writes YAML (values only)."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_json(path: str | os.PathLike) -> Any:
    """Reads JSON, failing with a one-line error naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeftError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise EdgeftError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically rewrites a JSON-lines file with `rows`."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads a JSON-lines file; a missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class StudentCard:
    """What an exporter or runtime needs to rebuild and feed the student (timm's PretrainedCfg)."""

    arch: str
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    teacher: str
    method: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "StudentCard":
        try:
            return cls(
                arch=data["arch"],
                num_classes=int(data["num_classes"]),
                class_names=list(data["class_names"]),
                input_size=tuple(data["input_size"]),
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                teacher=data.get("teacher", ""),
                method=data.get("method", ""),
                extra=dict(data.get("extra", {})),
            )
        except KeyError as exc:
            raise EdgeftError(f"student card lacks the field {exc.args[0]!r}") from None


EXPORT_MANIFEST = "export.json"  # the run's export manifest (ExportManifest): its file name, named here only


class RunDir:
    """The layout of one run directory (DESIGN.md: runs/<name>/): the one place that names its files."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    elapsed = property(lambda self: self.root / "checkpoints" / "elapsed.json")  # earlier sessions' seconds, this one's start
    student_dir = property(lambda self: self.root / "student")
    student_weights = property(lambda self: self.root / "student" / "model.safetensors")
    student_card = property(lambda self: self.root / "student" / "card.json")
    summary = property(lambda self: self.root / "summary.json")
    data_split = property(lambda self: self.root / "data_split.json")
    cache = property(lambda self: self.root / "cache")
    engines = property(lambda self: self.root / "engines")
    export_manifest = property(lambda self: self.root / EXPORT_MANIFEST)
    profiles = property(lambda self: self.root / "profiles")
    cards = property(lambda self: self.root / "cards")
    report_markdown = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")
    report_assets = property(lambda self: self.root / "report")  # the PNGs report.md links to

    def stage_dir(self, stage: str) -> Path:
        """Checkpoint folder of one training stage."""
        return self.checkpoints / stage

    def profile(self, target: str) -> Path:
        """The profile records of one target (its canonical name)."""
        return self.profiles / f"{target}.json"

    def profile_files(self) -> list[Path]:
        """Every target's profile file, host first, then by name."""
        return sorted(self.profiles.glob("*.json"), key=lambda p: (p.stem != "host", p.stem))

    def method_record(self, method: str) -> Path:
        """What a method records about its run (aft.json, kdep.json, irf.json, digg.json)."""
        return self.root / f"{method}.json"

    def card(self, target: str, suffix: str = ".md") -> Path:
        """The model card of one target: cards/<target>.md or .json."""
        return self.cards / f"{target}{suffix}"

    def is_run(self) -> bool:
        """Whether this directory holds a run: a trained student or exported engines."""
        return self.root.is_dir() and (self.student_card.is_file() or self.export_manifest.is_file())

    def has_student(self) -> bool:
        return self.student_weights.exists() and self.student_card.exists()

    def read_summary(self) -> dict:
        """summary.json's content (empty when the run has none yet)."""
        return read_json(self.summary) if self.summary.exists() else {}

    def read_card(self) -> StudentCard:
        if not self.has_student():
            raise EdgeftError(
                f"{self.root}: no trained student here (student/model.safetensors + card.json); "
                "run `edgeft compress --out DIR` first"
            )
        return StudentCard.from_json(read_json(self.student_card))


def _key(row: dict) -> tuple[Any, Any]:
    return row.get("format"), row.get("precision")


@dataclass
class ExportManifest:
    """The export manifest (export.json): the engines that passed validation against PyTorch
    (`engines`, rows of ExportRecord.to_json()) and the format × precision pairs refused, with the
    reason (`refused`)."""

    engines: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    run: str = ""
    updated: str = ""

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "ExportManifest":
        """The run's manifest; empty when nothing was exported."""
        path = RunDir(run_dir).export_manifest
        data = read_json(path) if path.exists() else {}
        return cls(list(data.get("engines", [])), list(data.get("refused", [])), data.get("run", ""),
                   data.get("updated", ""))

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Atomically writes the manifest into the run."""
        return write_json(RunDir(run_dir).export_manifest, {
            "run": self.run, "updated": self.updated, "engines": self.engines, "refused": self.refused})

    def engine(self, fmt: str, precision: str) -> dict | None:
        """The passed row of one format × precision, if any."""
        return next((r for r in self.engines if _key(r) == (fmt, precision)), None)

    def by_key(self) -> dict[tuple[Any, Any], dict]:
        """The passed rows by (format, precision)."""
        return {_key(r): r for r in self.engines}

    def reasons(self) -> dict[tuple[Any, Any], str]:
        """Why each refused (format, precision) was refused."""
        return {_key(r): r.get("reason", "") for r in self.refused}


@dataclass
class ProfileManifest:
    """profiles/<target>.json: the profile records of one target (measured or estimated)."""

    target: str
    records: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: str | os.PathLike, target: str) -> "ProfileManifest":
        """The target's records; empty when it was never profiled."""
        return cls.read_file(RunDir(run_dir).profile(target), target)

    @classmethod
    def read_file(cls, path: str | os.PathLike, target: str = "") -> "ProfileManifest":
        """One profile file (a missing file holds no records)."""
        data = read_json(path) if Path(path).exists() else {}
        return cls(data.get("target", target or Path(path).stem), list(data.get("records", [])))

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Atomically writes the target's profile file into the run."""
        return write_json(RunDir(run_dir).profile(self.target), {"target": self.target, "records": self.records})
