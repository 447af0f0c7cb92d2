"""Frozen configs for the commands; YAML holds values, overrides are checked by field name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
import typing
from typing import Any, TypeVar

import yaml

from edgeft.compress.methods import METHODS, method_entry
from edgeft.compress.methods.options import check_options, flag
from edgeft.errors import ConfigError
from edgeft.registry import unknown_name_message

C = TypeVar("C")


MIN_IMAGE_SIZE = 8
DEFAULT_TRANSFER_METHOD = "aft"  # `--method` when a teacher is given (the demo shows its gain over stl)


def _resume_free(default: Any) -> Any:
    """A field that may differ between a run and its --resume (it does not change the result)."""
    return dataclasses.field(default=default, metadata={"resume_free": True})


HEAD_INITS = ("default", "zero")


@dataclass(frozen=True)
class CompressConfig:
    """Every option of `edgeft compress`: one field per shared flag, and the chosen method's own options
    (`options`, declared beside the methods; YAML and config.yaml hold them as top-level keys)."""

    teacher: tuple[str, ...] = ("bit_m_r50x1",)
    teacher_weights: tuple[str, ...] = ()
    student: str = "resnet18"
    student_weights: str = "auto"
    data: str = "demo"
    classes: tuple[str, ...] = ()
    fraction: float | None = None
    shots: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    method: str | None = None  # None: DEFAULT_TRANSFER_METHOD with a teacher, else stl
    baseline: bool = True  # with a teacher: also fine-tune the same student alone (stl) to measure the gain
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    image_size: int | None = None  # the student's; default: the demo's 32 px, else the teacher's input size
    teacher_image_size: int | None = None  # default: the teacher's pretrained input size
    head_init: str = "default"  # the student's new head: its architecture's own init, or zero (BiT's rule)
    device: str = _resume_free("auto")
    workers: int = _resume_free(0)
    out: str | None = _resume_free(None)
    resume: bool = _resume_free(False)
    kernels: str = "auto"  # auto | cuda | torch: fused CUDA loss kernels (compress/kernels) or the torch reference
    # Export right after compressing (edgeft/export); these may change between a run and its --resume
    formats: tuple[str, ...] = _resume_free(())  # onnx | openvino | tensorrt
    precisions: tuple[str, ...] = _resume_free(())  # fp32 | fp16 | int8; empty: fp32
    target: str | None = _resume_free(None)  # edge target (edgeft/targets): its formats, then profile + report
    batch_profile: str | None = _resume_free(None)  # "MIN,OPT,MAX": a dynamic-batch export (default: static batch 1)
    max_drop: float | None = _resume_free(None)  # int8 accuracy bound in points; None: the int8 tolerance
    teacher_from: str | None = None  # a finished run whose model (e.g. irf's adapted teacher) is the teacher
    options: Any = None  # the chosen method's own options (its Options dataclass in compress/methods/options.py)

    def __post_init__(self) -> None:
        for name, size in (("--image-size", self.image_size), ("--teacher-image-size", self.teacher_image_size)):
            if size is not None and size < MIN_IMAGE_SIZE:  # else the decoder fails and the data is blamed
                raise ConfigError(f"{name} {size}: must be at least {MIN_IMAGE_SIZE} pixels")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"--head-init {self.head_init}: use one of {', '.join(HEAD_INITS)}")
        if self.method is None:  # a teacher is there to be transferred from
            object.__setattr__(self, "method", DEFAULT_TRANSFER_METHOD if self.teacher or self.teacher_from else "stl")
        declared = method_entry(self.method).options
        if self.options is None:
            object.__setattr__(self, "options", declared())
        elif type(self.options) is not declared:
            raise ConfigError(f"--method {self.method}: takes {declared.__name__}, not {type(self.options).__name__}")
        check_options(self.options)

    def value(self, name: str) -> Any:
        """A shared option or one of the method's own, by name."""
        for holder in (self.options, self):
            if name in _names(type(holder)) and name != "options":
                return getattr(holder, name)
        raise ConfigError(f"{flag(name)}: --method {self.method} does not take it")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for YAML (tuples become lists); the method's options as top-level keys."""
        values = {**plain_dict(self), **plain_dict(self.options)}
        del values["options"]
        return values

    @classmethod
    def from_values(cls, values: dict[str, Any], where: str = "") -> "CompressConfig":
        """Shared keys to the config, the chosen method's to its options. A key of another method is an
        error unless it holds that option's default (a saved config.yaml of an older edgeft holds them all)."""
        shared = {k: v for k, v in values.items() if k in _names(cls)}
        base = _make(cls, shared, where)
        own = _names(type(base.options))
        others = {k: v for k, v in values.items() if k not in shared and k not in own}
        for key, value in others.items():
            _check_foreign(key, value, base.method, where)
        options = _make(type(base.options), {k: v for k, v in values.items() if k in own}, where)
        return dataclasses.replace(base, options=options)


RESUME_FREE = frozenset(f.name for f in dataclasses.fields(CompressConfig) if f.metadata.get("resume_free"))


def plain_dict(config: Any) -> dict[str, Any]:
    """A config dataclass's fields as plain values for YAML (tuples become lists)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _check_foreign(key: str, value: Any, method: str, where: str) -> None:
    """A key that is not the chosen method's: unknown (with suggestions), or another method's option."""
    owners = {name: METHODS.get(name).options for name in METHODS.names()}
    takers = [name for name, options in owners.items() if key in _names(options)]
    if not takers:
        known = sorted(_names(CompressConfig) | {n for options in owners.values() for n in _names(options)})
        raise ConfigError(where + unknown_name_message("config key", key, known))
    default = next(f.default for f in dataclasses.fields(owners[takers[0]]) if f.name == key)
    if (tuple(value) if isinstance(value, list) else value) != default:
        raise ConfigError(f"{where}{flag(key)}: an option of {', '.join(takers)}; --method {method} does not take it")


@dataclass(frozen=True)
class PrimeConfig:
    """Every option of `edgeft prime` (train a VQGAN on upstream images, write a pack)."""

    data: str = ""
    out: str = ""
    work: str | None = None  # checkpoints, metrics, held-out grid; default <out>-work (never inside the pack)
    classes: tuple[str, ...] = ()
    image_size: int = 32
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 4e-4
    seed: int = 0
    holdout: int = 500  # held-out images (from the data's val/test split) for the reconstruction PSNR
    channels: int = 64
    codebook_size: int = 512
    disc_start: int | None = None  # optimiser step at which the PatchGAN starts; default half of training
    eval_every: int = 1000  # steps between held-out PSNR rows in <work>/metrics.jsonl
    checkpoint_every: int = 200  # steps between resumable checkpoints
    half: bool = False  # store the pack's weights in fp16
    device: str = "auto"
    resume: bool = False
    # The latent transformer for DIGG, trained after the VQGAN on its codes (0 steps: VQGAN only)
    transformer_steps: int = 0
    transformer_layers: int = 4
    transformer_heads: int = 4
    transformer_width: int = 192
    transformer_lr: float = 3e-4
    transformer_batch_size: int = 64

    to_dict = plain_dict


@dataclass(frozen=True)
class GenerateConfig:
    """Every option of `edgeft generate` (DIGG: complete masked codes of few images, OTA §3.2)."""

    pack: str = ""
    data: str = ""
    out: str = ""
    n: int = 1000
    classes: tuple[str, ...] = ()
    fraction: float | None = None
    shots: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    mask_shapes: tuple[str, ...] = ("box", "block")
    mask_ratio: tuple[float, ...] = (0.25, 0.75)
    temperature: float = 1.0
    top_k: int = 100
    batch_size: int = 64
    shard: str = "0/1"  # i/n: this process makes every n-th batch, starting at batch i
    device: str = "auto"

    to_dict = plain_dict


def build_config(cls: type[C], yaml_path: str | None = None, **overrides: Any) -> C:
    """Builds `cls` from an optional YAML file, then explicit overrides (None = not given); a class with
    `from_values` (CompressConfig: shared and method options) sorts the keys itself."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(_read_yaml(yaml_path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    where = f"{yaml_path}: " if yaml_path else ""
    from_values = getattr(cls, "from_values", None)
    return from_values(values, where) if from_values else _make(cls, values, where)


def _make(cls: type[C], values: dict[str, Any], where: str) -> C:
    """`cls(**values)` with unknown keys named and lists turned into the tuples a field holds."""
    names = _names(cls)
    for key in values:
        if key not in names:
            raise ConfigError(where + unknown_name_message("config key", key, sorted(names)))
    tuples = {name for name, kind in typing.get_type_hints(cls).items() if "tuple" in str(kind)}
    return cls(**{k: _as_tuple(v) if k in tuples else v for k, v in values.items()})


def _as_tuple(value: Any) -> tuple:
    """YAML's list (or a lone value) of a tuple field as the tuple the dataclass holds."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}
