"""Baselines: fine-tuning (stl), linear probe (lp), LP-FT, Hinton KD (kd) and FitNets-style feature KD (fkd)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from edgeft.compress.losses import hinton_kd
from edgeft.compress.methods.base import Method, Recipe, TransferContext
from edgeft.compress.methods.common import (Indexed, adapted_teacher, probe_features, set_classifier,
                                           train_linear_head)
from edgeft.compress.train import Stage

FINETUNE = Recipe(epochs=30, lr=0.05, optimizer="sgd", schedule="cosine", weight_decay=5e-4)
FEATURE_KD = Recipe(epochs=30, lr=0.05, optimizer="sgd", schedule="cosine", weight_decay=5e-4)
KD_TEMPERATURE = 4.0  # Hinton et al. 2015; CE and KL weighted equally
KD_ALPHA = 0.5


def finetune(ctx: TransferContext, stage: str = "finetune", recipe: Recipe = FINETUNE) -> nn.Module:
    """Trains every student parameter with cross-entropy on the few labelled images."""
    student = ctx.student
    loader = ctx.loader(ctx.train_set(augment=True))

    def loss(images: torch.Tensor, labels: torch.Tensor):
        logits = student(images)
        return F.cross_entropy(logits, labels), logits

    spec = ctx.spec(recipe, steps_per_epoch=len(loader))
    ctx.trainer.run_stage(Stage(stage, {"student": student}, loss, loader, spec, evaluate=_val(ctx, student)))
    return student


def linear_probe(ctx: TransferContext) -> nn.Module:
    """Freezes the student backbone and trains only its classifier on cached features."""
    train, val = probe_features(ctx, ctx.student, ctx.student_spec)
    head, _ = train_linear_head(ctx, "student-probe", train, ctx.images.labels, val, ctx.val.labels)
    set_classifier(ctx.student, head)
    return ctx.student


def _val(ctx: TransferContext, model: nn.Module):
    from edgeft.compress.methods.common import evaluate

    return lambda: evaluate(model, ctx.val, ctx.device)


class FineTune(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        return finetune(ctx)


class LinearProbe(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        return linear_probe(ctx)


class LinearProbeThenFineTune(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        linear_probe(ctx)
        return finetune(ctx, recipe=Recipe(epochs=FINETUNE.epochs, lr=FINETUNE.lr / 5))


class LogitDistillation(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        teacher = adapted_teacher(ctx)
        student = ctx.student
        if ctx.config.kd_targets == "online":  # the teacher sees every augmented batch
            loader = ctx.loader(ctx.train_set(augment=True))

            def loss(images: torch.Tensor, labels: torch.Tensor):
                logits = student(images)
                with torch.no_grad():
                    target = teacher(images)
                return hinton_kd(logits, target, labels, KD_TEMPERATURE, KD_ALPHA), logits
        else:  # cached: the probed teacher's logits of each whole image, from the probe's cached features
            features, _ = probe_features(ctx, ctx.teacher(), ctx.teacher_specs[0])
            with torch.no_grad():
                targets = teacher.head(features.to(ctx.device))
            loader = ctx.loader(Indexed(ctx.train_set(augment=True), range(len(ctx.images))))

            def loss(images: torch.Tensor, target: torch.Tensor):
                labels, rows = target[:, 0], target[:, 1]
                logits = student(images)
                return hinton_kd(logits, targets[rows], labels, KD_TEMPERATURE, KD_ALPHA), None  # target: [label, row]

        spec = ctx.spec(FINETUNE, steps_per_epoch=len(loader))
        ctx.trainer.run_stage(Stage("distill", {"student": student}, loss, loader, spec,
                                    evaluate=_val(ctx, student), frozen_eval_modules=[teacher]))
        return student


class FeatureDistillation(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        distill_features(ctx, ctx.teacher(), ctx.train_set(augment=True))
        return finetune(ctx)  # the projector is dropped; the student is fine-tuned on the labels


def distill_features(ctx: TransferContext, teacher: nn.Module, images: Dataset, stage: str = "distill-features",
                     recipe: Recipe = FEATURE_KD, project: bool = True) -> None:
    """L2 (MSE) from the student's pooled features to the frozen teacher's on `images` (labels unused).

    A linear projector maps the student's features to the teacher's width — always when `project` (FitNets'
    regressor), else only when the widths differ (OTA §4.2); it is trained with the student and dropped after.
    """
    student = ctx.student
    width = student.num_features, teacher.num_features
    projector = nn.Linear(*width) if project or width[0] != width[1] else nn.Identity()
    loader = ctx.loader(images)

    def loss(images: torch.Tensor, labels: torch.Tensor):
        with torch.no_grad():
            target = teacher.features(images)
        return F.mse_loss(projector(student.features(images)), target), None

    spec = ctx.spec(recipe, steps_per_epoch=len(loader))
    ctx.trainer.run_stage(Stage(stage, {"student": student, "projector": projector}, loss, loader, spec,
                                frozen_eval_modules=[teacher]))
