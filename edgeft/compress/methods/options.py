"""Each transfer method's own options: frozen dataclasses, declared once, torch-free.

A method's `Options` class is named in its registration (`edgeft.compress.methods.METHODS`); the CLI
builds one option group per declaring class from these fields (flag `--name-with-dashes`, type, choices,
default, help), and `CompressConfig.options` holds the chosen method's instance. Methods that share a
step share its options by inheritance (e.g. `--pack` for irf, digg, ota and digg-irf).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from edgeft.errors import ConfigError
from edgeft.registry import unknown_name_message


def option(default: Any, help: str, choices: tuple[str, ...] = (), default_text: str | None = None,
           minimum: int | None = None) -> Any:
    """A method option: its default, one line of help, the values it takes (a fixed set, or numbers from
    `minimum` up) and how its default reads in `--help` when not the value itself."""
    return field(default=default, metadata={"help": help, "choices": choices, "default_text": default_text,
                                            "minimum": minimum})


def flag(name: str) -> str:
    """The command-line flag of option `name`."""
    return "--" + name.replace("_", "-")


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The options `cls` declares itself (not those it inherits)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return [f for f in dataclasses.fields(cls) if f.name not in inherited]


def option_types(cls: type) -> dict[str, Any]:
    """Field name → its resolved type (str, int, float, bool, tuple[...] or Optional of them)."""
    return typing.get_type_hints(cls)


def check_options(options: Any) -> None:
    """A value outside an option's choices, or below its minimum, is a ConfigError naming its flag."""
    for f in dataclasses.fields(options):
        choices, minimum, value = f.metadata.get("choices"), f.metadata.get("minimum"), getattr(options, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{flag(f.name)}: " + unknown_name_message("value", str(value), list(choices)))
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"{flag(f.name)} {value}: give a number >= {minimum}")


@dataclass(frozen=True)
class NoOptions:
    """Methods without options of their own."""


@dataclass(frozen=True)
class KdOptions:
    """kd options"""

    kd_targets: str = option("cached", "the teacher's logits of each whole training image, computed once (cached), "
                                       "or of every augmented batch (online: one teacher pass per step)",
                             choices=("cached", "online"))


@dataclass(frozen=True)
class DistillOptions:
    """distillation stage"""

    teacher_views: int = option(0, "augmented views per distillation image whose teacher outputs are computed once "
                                   "(cached, through ONNX Runtime/OpenVINO on a CPU); each epoch the student gets a "
                                   "random one of them. 0: the teacher sees every augmented batch",
                                default_text="0 (online)")
    distill_epochs: int | None = option(None, "epochs of the distillation stage alone (e.g. as many as a "
                                              "supervised pre-training it replaces)",
                                        default_text="--epochs, else the method's", minimum=1)


@dataclass(frozen=True)
class AftOptions:
    """aft options"""

    beta: str = option("10", "weight of the kernel distance, a number >= 0, or 'auto' to pick 3/10/30 on a "
                             "10% hold-out (~4x the training)")
    aft_weights: str = option("learned", "learned feature weights or identity (ablation)",
                              choices=("learned", "identity"))
    aft_kernel: str = option("linear", "batch kernel (rbf: ablation)", choices=("linear", "rbf"))
    aft_augment: bool = option(True, "random crop/flip of the student's images; the teacher's cached features "
                                     "stay those of the whole image")


@dataclass(frozen=True)
class UnlabeledOptions:
    """distillation images"""

    unlabeled: str | None = option(None, "directory or .zip of distillation images (kdep), or digg:PACK for "
                                         "DIGG images of the few; with --kd-data upstream: the upstream images",
                                   default_text="the labelled train images, labels unused")


@dataclass(frozen=True)
class GenerationOptions:
    """DIGG generation"""

    n_generated: int | None = option(None, "images to generate", default_text="10 per training image")
    mask_shapes: tuple[str, ...] = option(("box", "block"), "masks on the code grid: box (one rectangle), block "
                                                            "(scattered squares)")
    mask_ratio: tuple[float, ...] = option((0.25, 0.75), "masked share of the code grid, MIN,MAX drawn uniformly")
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(100, "sample among the k most likely codes")


@dataclass(frozen=True)
class KdepOptions(UnlabeledOptions, GenerationOptions, DistillOptions):
    """kdep options"""

    align: str = option("svd", "teacher→student dimension alignment", choices=("svd", "linear", "channel-select"))
    transform: str = option("pts", "transform of the aligned teacher target", choices=("pts", "none", "std-norm"))


@dataclass(frozen=True)
class PackOptions:
    """upstream pack"""

    pack: str | None = option(None, "pack directory made by `edgeft prime` (DIGG: with a transformer), or 'demo'")


@dataclass(frozen=True)
class IrfOptions(PackOptions):
    """irf options"""

    search: bool = option(False, "pick the paper's lr/wd grids on a 10% hold-out of train (~7x the training)")
    deliver_data: str = option("rec", "images of the frozen-backbone head stage (ablation)",
                               choices=("rec", "original", "mixed"))
    calib_data: str = option("original", "images of the all-parameter stage (ablation)",
                             choices=("original", "rec", "mixed"))


@dataclass(frozen=True)
class DiggOptions(PackOptions, UnlabeledOptions, GenerationOptions, DistillOptions):
    """DIGG distillation"""

    kd_data: str = option("digg", "distillation images: DIGG-generated, --unlabeled upstream images (same count) "
                                  "or the few raw images", choices=("digg", "upstream", "raw"))


@dataclass(frozen=True)
class OtaOptions(IrfOptions, DiggOptions):
    """ota and digg-irf: IRF's and DIGG's options together"""
