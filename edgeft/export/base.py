"""What every exporter shares: precisions, the export record, the job, the base class, the registry.

An exporter turns the run's student into one engine file at one precision, validates it
against PyTorch on held-out images and returns an `ExportRecord`; an engine that fails its
tolerance is deleted before `RefusedError` is raised (DESIGN.md §House style 6), and the export
goes on with the other engines (pipeline.py).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from torch import nn

from edgeft.artifacts import RunDir, StudentCard
from edgeft.errors import ConfigError, EdgeftError, RefusedError, WeightsError
from edgeft.export.validate import DEFAULT_TOLERANCES, Figures, Reference, Runner, Tolerance, compare
from edgeft.registry import Registry
from edgeft.runtime import FORMAT_BACKEND
from edgeft.runtime.fingerprint import machine_fingerprint

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportRecord(Figures):
    """One validated engine: its validation figures, where it is, what it is, what built it.

    `path` is relative to the run directory so that a copied run stays valid; `note` says in
    one line what the user must still do (e.g. build a TensorRT engine on the device, with
    `recipe`); `skipped` says why the engine itself was not built here (the record is then the
    validated file to build it from, e.g. TensorRT's ONNX without a GPU).
    """

    path: str
    format: str
    precision: str
    size_bytes: int
    passed: bool
    validated_with: str
    versions: dict[str, str | None] = field(default_factory=dict)
    note: str = ""
    recipe: dict[str, str] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)  # runtime/fingerprint.py: what validated it
    batch: int | dict[str, int] = 1  # a static batch, or the dynamic profile {min, opt, max}
    opset: int | None = None  # the ONNX opset the engine was built from
    quantization: dict[str, Any] | None = None  # int8: calibrator, layers kept in float, drop (int8_guard.py)
    skipped: str = ""  # why no engine of this format was built here (a recipe instead); "" when it was

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"path": self.path, "format": self.format, "precision": self.precision, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExportRecord":
        return cls(**data)


@dataclass(frozen=True)
class BatchShape:
    """The engine's batch axis: static (`size`) by default, dynamic only with an explicit profile.

    Edge targets run one image at a time and dynamic-batch engines can be several times
    slower (ECOSYSTEM.md pain point 7), so a dynamic axis needs `--batch-profile MIN,OPT,MAX`,
    which also becomes the TensorRT optimisation profile.
    """

    size: int = 1
    profile: tuple[int, int, int] | None = None

    @property
    def dynamic(self) -> bool:
        return self.profile is not None

    def to_json(self) -> int | dict[str, int]:
        return dict(zip(("min", "opt", "max"), self.profile)) if self.profile else self.size

    @classmethod
    def parse(cls, batch: int = 1, profile: str | Sequence[int] | None = None) -> "BatchShape":
        """From `--batch N` and `--batch-profile MIN,OPT,MAX` (a profile overrides the static batch)."""
        if not profile:
            if batch < 1:
                raise ConfigError(f"--batch {batch}: must be >= 1")
            return cls(size=batch)
        parts = profile.split(",") if isinstance(profile, str) else list(profile)
        try:
            points = tuple(int(p) for p in parts)
        except ValueError:
            points = ()
        if len(points) != 3 or not 1 <= points[0] <= points[1] <= points[2]:
            raise ConfigError(f"--batch-profile {profile}: give MIN,OPT,MAX batch sizes with 1 <= MIN <= OPT <= MAX, "
                              "e.g. 1,8,32")
        return cls(size=points[1], profile=points)

    @classmethod
    def from_json(cls, value: Any) -> "BatchShape":
        if isinstance(value, dict):
            return cls.parse(profile=(value["min"], value["opt"], value["max"]))
        return cls.parse(int(value or 1))


@dataclass
class ExportJob:
    """The student, its reference outputs and the calibration images, shared by all exports of a run."""

    run: RunDir
    card: StudentCard
    model: nn.Module
    reference: Reference
    workdir: Path  # intermediates (ONNX variants) that are not engines themselves
    calibration: Callable[[], np.ndarray]  # normalised calibration images, read on first use
    onnx_source: Path | None = None  # a user-given fp32 ONNX to start from instead of exporting
    cache: dict[str, Path] = field(default_factory=dict)
    batch: BatchShape = BatchShape()
    opset: int | None = None  # None: export/preflight.py picks it for the job's formats
    max_drop: float | None = None  # --max-drop: the int8 accuracy bound in points (int8_guard.py)
    quantization: dict[str, dict[str, Any]] = field(default_factory=dict)  # how each int8 variant was made
    failed: dict[str, str] = field(default_factory=dict)  # why an intermediate (e.g. onnx-int8) could not be made

    @property
    def engines(self) -> Path:
        return self.run.engines

    def relative(self, path: Path) -> str:
        return path.relative_to(self.run.root).as_posix()

    def tolerance(self, tol: Tolerance, precision: str) -> Tolerance:
        """`tol` with the job's --max-drop as the int8 accuracy bound."""
        if precision != "int8" or self.max_drop is None:
            return tol
        return replace(tol, max_accuracy_drop=self.max_drop / 100)


class Exporter(ABC):
    """One engine format. Subclasses write the engine and name the runner that validates it."""

    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""
    tolerances: ClassVar[dict[str, Tolerance]] = DEFAULT_TOLERANCES

    @property
    def runtime(self) -> str:
        """The backend that validates (and later runs) the engine: the one that declares this format."""
        return FORMAT_BACKEND[self.name]

    @abstractmethod
    def export(self, job: ExportJob, precision: str) -> ExportRecord:
        """Writes, validates and describes the engine of `precision` (deletes it and raises RefusedError
        when it fails validation)."""

    @abstractmethod
    def versions(self) -> dict[str, str | None]:
        """Versions of the libraries that built and ran the engine."""

    def engine_path(self, job: ExportJob, precision: str) -> Path:
        return job.engines / self.name / f"model-{precision}{self.suffix}"

    def finish(
        self,
        job: ExportJob,
        precision: str,
        files: list[Path],
        runner: Runner,
        validated_with: str,
        runtime: str | None = None,
        **extra: Any,
    ) -> ExportRecord:
        """Validates `runner` against PyTorch; keeps `files` (first is the engine) only if it passes.

        The record carries the fingerprint of `runtime` (default: the exporter's) on this machine.
        """
        try:
            figures = compare(runner, job.reference, job.card)
        except Exception:
            remove(files)
            raise
        tol = job.tolerance(self.tolerances[precision], precision)
        failures = figures.failures(tol)
        if failures:
            remove(files)
            raise RefusedError(
                f"{self.name} {precision} export failed validation against PyTorch on {figures.images} "
                f"held-out images ({'; '.join(failures)}); the engine was deleted"
                + (" — try more --calib images or use fp16" if precision == "int8" else "")
            )
        if precision == "int8":  # TensorRT builds from the ONNX int8 variant; OpenVINO passes its own
            extra.setdefault("quantization", job.quantization.get("onnx"))
        record = ExportRecord(
            **asdict(figures), path=job.relative(files[0]), format=self.name, precision=precision,
            size_bytes=sum(f.stat().st_size for f in files), passed=True, validated_with=validated_with,
            versions=self.versions(), fingerprint=machine_fingerprint(runtime or self.runtime),
            batch=job.batch.to_json(), opset=job.opset, **extra,
        )
        log.info("%s %s: top-1 agreement %.4f, max |Δ| %.2e", self.name, precision,
                 record.top1_agreement, record.max_abs_diff)
        return record


EXPORTERS: Registry[type[Exporter]] = Registry("format")


def remove(paths: list[Path]) -> None:
    """Deletes engine files so that nothing invalid is left looking valid."""
    for path in paths:
        path.unlink(missing_ok=True)


def load_student(run: RunDir) -> tuple[StudentCard, nn.Module]:
    """Rebuilds the student from its card with timm and loads its weights (eval mode, CPU)."""
    import timm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = run.read_card()
    try:
        model = timm.create_model(card.arch, pretrained=False, num_classes=card.num_classes, exportable=True)
    except RuntimeError as exc:
        raise WeightsError(f"{run.student_card}: cannot build the student '{card.arch}' with timm ({exc})") from None
    try:
        state = load_file(str(run.student_weights))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{run.student_weights}: cannot read the student weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise WeightsError(
            f"{run.student_weights}: weights do not fit {card.arch} with {card.num_classes} classes "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {example!r})"
        )
    return card, model.eval()


def library_version(module: str) -> str | None:
    """The installed version of a distribution, or None when it is absent."""
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def require(module: str, install: str):
    """Imports a dependency or fails with the exact install command, e.g. `pip install 'edgeft[tensorrt]'`
    (DESIGN.md §House style 9); `install` is the pip requirement that provides `module`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgeftError(f"{module} is not installed: pip install '{install}'") from None
