"""What every method receives (`TransferContext`) and implements (`Method.fit`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeft.artifacts import RunDir
from edgeft.compress.data import EpochSampler, ImageDataset, build_transform, make_loader
from edgeft.compress.models import ModelSpec, Normalized
from edgeft.compress.resumable import Dist
from edgeft.compress.train import Trainer, TrainSpec
from edgeft.config import CompressConfig
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TransferContext:
    """Teacher(s), student, decoded data splits, run directory and trainer of one compress run."""

    config: CompressConfig
    run: RunDir
    device: torch.device
    trainer: Trainer
    classes: list[str]
    images: ImageDataset  # the few labelled training images, no transform
    val: ImageDataset  # held-out images with the eval transform
    image_size: int
    teacher_specs: list[ModelSpec]
    student: Normalized
    student_spec: ModelSpec
    _teachers: list[Normalized] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # method facts for summary.json (e.g. teacher accuracy)

    @property
    def options(self) -> Any:
        """The method's own options (its Options dataclass, compress/methods/options.py)."""
        return self.config.options

    @property
    def dist(self) -> Dist:
        return self.trainer.dist

    def teachers(self) -> list[Normalized]:
        """The frozen teacher backbones (no head)."""
        if not self._teachers:
            raise ConfigError(f"--method {self.config.method}: needs a teacher; pass --teacher NAME")
        return self._teachers

    def teacher(self) -> Normalized:
        return self.teachers()[0]

    def train_set(self, augment: bool = True) -> ImageDataset:
        """The labelled training images with the train (augmenting) or eval transform."""
        return self.images.with_transform(build_transform(self.image_size, augment))

    def loader(self, dataset: Dataset, shuffle: bool = True, batch_size: int | None = None) -> DataLoader:
        """Seeded, DDP-sharded loader over `dataset`."""
        sampler = EpochSampler(len(dataset), self.config.seed, shuffle, self.dist.rank, self.dist.world)
        return make_loader(dataset, batch_size or self.config.batch_size, sampler, self.config.workers)

    def spec(self, defaults: "Recipe", steps_per_epoch: int = 1, overridable: bool = True) -> TrainSpec:
        """A stage's recipe: the method's defaults, overridden by the user's flags when `overridable`."""
        cfg = self.config
        if not overridable:
            return TrainSpec(defaults.epochs, defaults.lr, defaults.optimizer, defaults.schedule,
                             defaults.weight_decay, eval_every=defaults.epochs)
        epochs = cfg.epochs or defaults.epochs
        if cfg.steps:
            epochs = max(1, -(-cfg.steps // max(1, steps_per_epoch)))
        return TrainSpec(
            epochs=epochs,
            lr=cfg.lr if cfg.lr is not None else defaults.lr,
            optimizer=cfg.optimizer or defaults.optimizer,
            schedule=cfg.schedule or defaults.schedule,
            weight_decay=cfg.weight_decay if cfg.weight_decay is not None else defaults.weight_decay,
            eval_every=max(1, epochs // 5),
        )

    def distill_spec(self, defaults: "Recipe", steps_per_epoch: int = 1) -> TrainSpec:
        """A distillation stage's recipe: `spec`, with `--distill-epochs` when given (evaluated at its end)."""
        spec = self.spec(defaults, steps_per_epoch)
        epochs = getattr(self.options, "distill_epochs", None)
        return replace(spec, epochs=epochs, eval_every=epochs) if epochs else spec


@dataclass(frozen=True)
class Recipe:
    """A method stage's default optimisation settings (overridable from the CLI)."""

    epochs: int = 30
    lr: float = 0.01
    optimizer: str = "sgd"
    schedule: str = "cosine"
    weight_decay: float = 5e-4


class Method:
    """A transfer method: `fit` trains `ctx.student` and returns it (DESIGN.md §House style 5).

    Each one is listed by name in `edgeft.compress.methods.METHODS`.
    """

    def fit(self, ctx: TransferContext) -> nn.Module:
        raise NotImplementedError

