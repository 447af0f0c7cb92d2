"""KDEP, knowledge distillation as efficient pre-training (He et al., CVPR 2022, §3).

Stage 1 distils the teacher's pooled penultimate features, taken before the final activation,
into the student's pre-activation pooled features on unlabeled images: `3·MSE(student, target)`,
no labels, no logits. The target is the teacher feature centred and projected on the top-k right
singular vectors of the teacher features over the distillation images (k = the student's width;
computed once, offline, with the training augmentation, cached in the run directory), then
passed through PTS. Nothing is learned between the two networks. Stage 2 fine-tunes the whole
student (final activation back in place) on the few labelled images, like `stl`.

The distillation images are `--unlabeled DIR` (a directory or .zip), `--unlabeled digg:PACK` (DIGG
images generated from the few images, OTA §3.2: methods/distillation.py), or by default the few images.

Ablations: `--align linear` (a learned linear map on the student side, the paper's 1×1-conv
baseline) or `channel-select` (the k highest-variance teacher channels); `--transform none` or
`std-norm` (divide each target channel by its std).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress import kernels as fused
from edgeft.compress import losses
from edgeft.compress.data import ImageDataset, build_transform
from edgeft.compress.methods.base import Method, Recipe, TransferContext
from edgeft.compress.methods.common import EVAL_BATCH, finetune
from edgeft.compress.methods.distillation import digg_images, unlabeled_images
from edgeft.compress.methods.views import TeacherTargets, teacher_targets
from edgeft.compress.taps import PreActivation
from edgeft.compress.train import Stage
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

# The paper distils with SGD m0.9, lr 0.3 at batch 512 (R18), wd 5e-4 (lr scaled to batch 64 here) for
# 90+ epochs of ImageNet; 20 epochs keep distillation + fine-tuning of the demo within minutes on a CPU.
KDEP_RECIPE = Recipe(epochs=20, lr=0.05, optimizer="sgd", schedule="cosine", weight_decay=5e-4)
LOSS_WEIGHT = 3.0  # w in w·MSE (SPEC fact 3; 20 for a plain supervised R50 teacher)
STD_FLOOR = 1e-3  # std-norm: channel stds are floored at this fraction of the largest one


@dataclass
class Alignment:
    """The fixed teacher → target map, computed once over the distillation images."""

    mean: torch.Tensor  # [Dt]
    basis: torch.Tensor | None  # [Dt, k]; None: raw teacher features (the student side learns the map)
    std: torch.Tensor  # [k] per-channel std of the aligned features (for std-norm)

    def target(self, teacher: torch.Tensor, transform: str, kernels: str = "torch") -> torch.Tensor:
        """The student's regression target for teacher pre-activation features [B, Dt]."""
        aligned = teacher if self.basis is None else (teacher - self.mean) @ self.basis
        if transform == "pts":
            return fused.power_temperature_scale(aligned, kernels=kernels)
        if transform == "std-norm":
            return aligned / self.std
        return aligned

    def to(self, device: torch.device) -> "Alignment":
        basis = None if self.basis is None else self.basis.to(device)
        return Alignment(self.mean.to(device), basis, self.std.to(device))


def fit_alignment(features: torch.Tensor, align: str, dim: int) -> Alignment:
    """Alignment `align` (svd | channel-select | linear) of [N, Dt] teacher features to `dim` channels."""
    if align == "svd":
        mean, basis = losses.svd_align(features, dim)
    elif align == "channel-select":
        mean = features.mean(0)
        keep = features.var(0).topk(dim).indices.sort().values
        basis = torch.eye(features.shape[1], dtype=features.dtype)[:, keep]
    else:
        mean, basis = torch.zeros(features.shape[1], dtype=features.dtype), None
    aligned = features if basis is None else (features - mean) @ basis
    std = aligned.std(0)
    return Alignment(mean, basis, std.clamp_min(STD_FLOOR * std.max().clamp_min(1e-12)))


def numerical_rank(features: torch.Tensor, tolerance: float = 1e-4) -> int:
    """How many directions the centred [N, D] features span: singular values above `tolerance` × the largest."""
    values = torch.linalg.svdvals((features - features.mean(0)).double())
    return int((values > tolerance * values.max().clamp_min(1e-30)).sum())


def std_ratio(x: torch.Tensor) -> float:
    """KDEP's 'Std Ratio': largest over smallest per-channel std."""
    std = x.std(0)
    return round((std.max() / std.min().clamp_min(1e-12)).item(), 2)


def _distillation_images(ctx: TransferContext) -> ImageDataset:
    """`--unlabeled`: a directory or .zip, `digg:PACK` (DIGG images of the few, OTA §3.2), or none (the few images)."""
    unlabeled = ctx.options.unlabeled
    if not unlabeled:
        return ctx.images
    if unlabeled.startswith("digg:"):
        return digg_images(ctx, unlabeled.removeprefix("digg:"), flag="--unlabeled digg:")
    return unlabeled_images(unlabeled, ctx.image_size)


def _taps_output(taps: list[PreActivation]) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The teachers' pooled pre-activation features, concatenated: `output(teachers, images)` for the views."""
    return lambda _teachers, images: torch.cat([tap(images) for tap in taps], 1).float()


class DistillationAsPretraining(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        align, transform = ctx.options.align, ctx.options.transform
        fused.check_mode(ctx.config.kernels)
        images = _distillation_images(ctx)
        teacher_taps = [PreActivation(t, ctx.image_size) for t in ctx.teachers()]
        student_tap = PreActivation(ctx.student, ctx.image_size)
        try:
            width = sum(tap.dim for tap in teacher_taps)
            if align != "linear" and student_tap.dim > width:
                raise ConfigError(
                    f"--align {align}: the student's {student_tap.dim} features outnumber the teacher's {width}; "
                    "use --align linear or a wider teacher"
                )
            augmented = images.with_transform(build_transform(ctx.image_size, train=True))
            targets = teacher_targets(ctx, nn.ModuleList(ctx.teachers()), _taps_output(teacher_taps), "kdep-taps",
                                      augmented, EVAL_BATCH)
            alignment, stats = self._alignment(ctx, targets, align, student_tap.dim, transform)
            self._distill(ctx, targets, student_tap, alignment.to(ctx.device), align, transform)
        finally:
            for tap in [*teacher_taps, student_tap]:
                tap.remove()
        if ctx.dist.is_main:
            artifacts.write_json(ctx.run.method_record("kdep"), {
                "align": align, "transform": transform, "distillation_images": len(images),
                "unlabeled": ctx.options.unlabeled, "teacher_taps": [t.path for t in teacher_taps],
                "student_tap": student_tap.path, "teacher_width": width, "student_width": student_tap.dim, **stats,
            })
        return finetune(ctx)

    @staticmethod
    def _alignment(ctx: TransferContext, targets: TeacherTargets, align: str, dim: int,
                   transform: str) -> tuple[Alignment, dict]:
        """The alignment, computed once over the augmented distillation images (their `--teacher-views` when
        given) and cached atomically."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        key = cache_key(*[f"{s.timm_name}|{s.weights}" for s in ctx.teacher_specs], str(ctx.options.unlabeled),
                        str(ctx.image_size), align, str(dim), transform, str(ctx.config.seed), str(ctx.options.teacher_views))
        path = ctx.run.cache / f"kdep-align-{key}.safetensors"
        if path.exists():
            with safe_open(str(path), "pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
                stats = json.loads(handle.metadata()["stats"])
            return Alignment(tensors["mean"], tensors.get("basis"), tensors["std"]), stats
        features = targets.fitting_set(ctx.config.seed, ctx.device, EVAL_BATCH)
        alignment = fit_alignment(features, align, dim)
        aligned = alignment.target(features, "none")
        stats = {"std_ratio_aligned": std_ratio(aligned), "std_ratio_target": std_ratio(alignment.target(features, transform)),
                 "teacher_rank": numerical_rank(features)}
        if align == "svd" and stats["teacher_rank"] < dim:
            log.warning("kdep: the teacher's features span only %d dimensions over these images, fewer than the "
                        "student's %d: %d SVD directions are empty and their targets are noise (a linear layer "
                        "before the tap, e.g. EfficientNet's conv_head, caps the rank)", stats["teacher_rank"], dim,
                        dim - stats["teacher_rank"])
        log.info("kdep: %s alignment of %d features to %d over %d images (std ratio %s → %s with %s)", align,
                 features.shape[1], dim, len(features), stats["std_ratio_aligned"], stats["std_ratio_target"], transform)
        if ctx.dist.is_main:
            tensors = {"mean": alignment.mean, "std": alignment.std}
            if alignment.basis is not None:
                tensors["basis"] = alignment.basis
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            artifacts.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"stats": json.dumps(stats)}))
        return alignment, stats

    @staticmethod
    def _distill(ctx: TransferContext, targets: TeacherTargets, student_tap: PreActivation, alignment: Alignment,
                 align: str, transform: str) -> None:
        """Stage 1: `3·MSE(student pre-activation, target)` over the distillation images."""
        modules: dict[str, nn.Module] = {"student": ctx.student}
        projector = None
        if align == "linear":
            projector = modules["projector"] = nn.Linear(student_tap.dim, alignment.mean.shape[0])

        kernels = ctx.config.kernels

        def loss(images: torch.Tensor, labels: torch.Tensor):
            teacher = targets(images, labels)
            prediction = student_tap(images).float()
            if projector is None and transform == "pts":  # the default: one fused loss where CUDA runs it
                return fused.kdep_loss(prediction, teacher, alignment.mean, alignment.basis, LOSS_WEIGHT,
                                       kernels=kernels), None
            if projector is not None:
                prediction = projector(prediction)
            with torch.no_grad():
                target = alignment.target(teacher, transform, kernels)
            return LOSS_WEIGHT * F.mse_loss(prediction, target), None

        loader = ctx.loader(targets.dataset)
        spec = ctx.distill_spec(KDEP_RECIPE, steps_per_epoch=len(loader))
        ctx.trainer.run_stage(Stage("kdep-distill", modules, loss, loader, spec,
                                    frozen_eval_modules=list(ctx.teachers())))
