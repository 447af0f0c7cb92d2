"""Frozen configs for the commands; YAML holds values, overrides are checked by field name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgeft.errors import ConfigError
from edgeft.registry import unknown_name_message

C = TypeVar("C")


MIN_IMAGE_SIZE = 8
DEFAULT_TRANSFER_METHOD = "aft"  # `--method` when a teacher is given (the demo shows its gain over stl)


@dataclass(frozen=True)
class CompressConfig:
    """Every option of `edgeft compress` (one field per CLI flag)."""

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
    device: str = "auto"
    workers: int = 0
    out: str | None = None
    resume: bool = False
    kernels: str = "auto"  # auto | cuda | torch: fused CUDA loss kernels (compress/kernels) or the torch reference
    # Export right after compressing (edgeft/export)
    formats: tuple[str, ...] = ()  # onnx | openvino | tensorrt
    precisions: tuple[str, ...] = ()  # fp32 | fp16 | int8; empty: fp32
    target: str | None = None  # edge target (edgeft/targets): its formats, then profile + report
    batch_profile: str | None = None  # "MIN,OPT,MAX": a dynamic-batch export (default: static batch 1)
    max_drop: float | None = None  # int8 accuracy bound in points (export/int8_guard.py); None: the int8 tolerance
    # AFT (methods/aft.py)
    beta: str = "10"  # weight of the kernel distance: a number >= 0, or "auto" (grid 3/10/30 on a 10% hold-out)
    aft_weights: str = "learned"  # learned | identity (ablation)
    aft_kernel: str = "linear"  # linear | rbf (ablation)
    aft_augment: bool = True  # random crop/flip of the student's view (the teacher's features: the whole image)
    # Hinton KD (methods/baselines.py)
    kd_targets: str = "cached"  # cached (the probed teacher's logits of each whole image) | online (every augmented batch)
    # KDEP (methods/kdep.py)
    unlabeled: str | None = None  # distillation images; default the labelled train images without labels
    align: str = "svd"  # svd | linear | channel-select
    transform: str = "pts"  # pts | none | std-norm
    # IRF (methods/irf.py) and distilling from a finished run
    pack: str | None = None  # VQGAN pack made by `edgeft prime`, or 'demo'
    search: bool = False  # irf: pick the paper's lr/wd grids on a 10% hold-out of train
    deliver_data: str = "rec"  # irf delivering (frozen backbone, new head): rec | original | mixed
    calib_data: str = "original"  # irf calibration (all parameters): original | rec | mixed
    teacher_from: str | None = None  # a finished run whose model (e.g. irf's adapted teacher) is the teacher
    # DIGG distillation (methods/digg.py, ota.py): digg, ota, digg-irf; kdep with --unlabeled digg:PACK
    kd_data: str = "digg"  # digg | upstream (--unlabeled images, same count) | raw (the few images)
    n_generated: int | None = None  # DIGG images to distil on; default 10 per few image
    mask_shapes: tuple[str, ...] = ("box", "block")
    mask_ratio: tuple[float, ...] = (0.25, 0.75)  # masked share of the code grid, drawn uniformly in [min, max]
    temperature: float = 1.0
    top_k: int = 100

    def __post_init__(self) -> None:
        for flag, size in (("--image-size", self.image_size), ("--teacher-image-size", self.teacher_image_size)):
            if size is not None and size < MIN_IMAGE_SIZE:  # else the decoder fails and the data is blamed
                raise ConfigError(f"{flag} {size}: must be at least {MIN_IMAGE_SIZE} pixels")
        if self.method is None:  # a teacher is there to be transferred from
            object.__setattr__(self, "method", DEFAULT_TRANSFER_METHOD if self.teacher or self.teacher_from else "stl")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for YAML (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


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

    to_dict = CompressConfig.to_dict


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

    to_dict = CompressConfig.to_dict


def build_config(cls: type[C], yaml_path: str | None = None, **overrides: Any) -> C:
    """Builds `cls` from an optional YAML file, then explicit overrides (None = not given)."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(_read_yaml(yaml_path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            where = f"{yaml_path}: " if yaml_path else ""
            raise ConfigError(where + unknown_name_message("config key", key, names))
    for f in dataclasses.fields(cls):
        if f.name in values and _is_tuple_field(f) and not isinstance(values[f.name], tuple):
            value = values[f.name]
            values[f.name] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return cls(**values)


def _is_tuple_field(f: dataclasses.Field) -> bool:
    return "tuple" in str(f.type)


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
