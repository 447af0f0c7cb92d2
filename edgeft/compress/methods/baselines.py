"""Baselines: fine-tuning (stl), linear probe (lp), LP-FT, Hinton KD (kd) and FitNets-style feature KD (fkd)."""
from __future__ import annotations

import torch
from torch import nn

from edgeft.compress.losses import hinton_kd
from edgeft.compress.methods.base import Method, Recipe, TransferContext
from edgeft.compress.methods.common import (FINETUNE, Indexed, adapted_teacher, distill_features, finetune, probe_features,
                                           set_classifier, train_linear_head, val_accuracy)
from edgeft.compress.train import Stage

KD_TEMPERATURE = 4.0  # Hinton et al. 2015; CE and KL weighted equally
KD_ALPHA = 0.5


def linear_probe(ctx: TransferContext) -> nn.Module:
    """Freezes the student backbone and trains only its classifier on cached features."""
    train, val = probe_features(ctx, ctx.student, ctx.student_spec)
    head, _ = train_linear_head(ctx, "student-probe", train, ctx.images.labels, val, ctx.val.labels)
    set_classifier(ctx.student, head)
    return ctx.student


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
        if ctx.options.kd_targets == "online":  # the teacher sees every augmented batch
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
                                    evaluate=val_accuracy(ctx, student), frozen_eval_modules=[teacher]))
        return student


class FeatureDistillation(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        distill_features(ctx, ctx.teacher(), ctx.train_set(augment=True))
        return finetune(ctx)  # the projector is dropped; the student is fine-tuned on the labels
