"""AFT, adaptive feature transfer (Han et al. 2024, arXiv 2406.07337, §3 and Alg. 1).

The student keeps its own pretrained weights and is fine-tuned with `CE + β·kernel_distance`
between its pooled pre-logits features and the teacher's, which are computed once with the eval
transform and cached in the run directory. The teacher features are scaled by learned weights
`sigmoid(s)` (s = 0 at the start, its own Adam group at lr 1e-2 without weight decay), so the
student is only pushed towards the teacher features that help the task. Several teachers are
concatenated into one feature vector (one `s`, one kernel). No data augmentation (paper App. A.1).
"""
from __future__ import annotations

import copy
import functools
import logging
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from edgeft import artifacts
from edgeft.compress import kernels as fused
from edgeft.compress import losses
from edgeft.compress.methods.base import Method, Recipe, TransferContext
from edgeft.compress.methods.common import Indexed, evaluate, holdout_split, probe_features
from edgeft.compress.train import LossFn, Stage
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

# Paper App. A.1: Adam, cosine, no weight decay, lr 1e-3 for ResNets (1e-4 for ViT/Mixer).
AFT_RECIPE = Recipe(epochs=30, lr=1e-3, optimizer="adam", schedule="cosine", weight_decay=0.0)
WEIGHTS_LR = 1e-2  # Adam lr of the feature-weight logits `s`
BETA_GRID = (3.0, 10.0, 30.0)
Distance = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def distance_for(kernel: str, kernels: str = "auto") -> Distance:
    """The batch-kernel distance: linear through the `--kernels` dispatch (fused CUDA or the reference), or RBF."""
    if kernel == "rbf":
        return losses.rbf_kernel_distance
    return functools.partial(fused.kernel_distance, kernels=kernels)


def parse_beta(value: str | float) -> float | None:
    """`--beta`: a number >= 0, or None for 'auto'."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        beta = float(value)
    except ValueError:
        raise ConfigError(f"--beta {value}: give a number >= 0 (e.g. 10) or 'auto'") from None
    if not (math.isfinite(beta) and beta >= 0):
        raise ConfigError(f"--beta {value}: must be a finite number >= 0, or 'auto'")
    return beta


class FeatureWeights(nn.Module):
    """The diagonal μ = sigmoid(s) over the teacher features; all ones for the identity-μ ablation."""

    def __init__(self, dim: int, learned: bool = True) -> None:
        super().__init__()
        self.learned = learned
        self.s = nn.Parameter(torch.zeros(dim), requires_grad=learned)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.s) if self.learned else torch.ones_like(self.s)


def aft_objective(
    student: nn.Module, teacher_features: torch.Tensor, weights: FeatureWeights, beta: float,
    distance: Distance = losses.kernel_distance,
) -> LossFn:
    """The training loss on an `Indexed` batch: `CE(head(φ), y) + β·distance(φ, ψ, μ)` (Alg. 1, line 6)."""

    def loss(images: torch.Tensor, target: torch.Tensor):
        labels, rows = target[:, 0], target[:, 1]
        phi = student.features(images)
        logits = student.head(phi)
        # float32: the distance of normalised kernels is too coarse in bf16/fp16 autocast
        regulariser = distance(phi.float(), teacher_features[rows], weights())
        return F.cross_entropy(logits, labels) + beta * regulariser, None

    return loss


class AdaptiveFeatureTransfer(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        opts = ctx.options
        beta = parse_beta(opts.beta)
        learned = opts.aft_weights == "learned"
        distance = distance_for(opts.aft_kernel, fused.check_mode(ctx.config.kernels))
        if ctx.student_spec.weights == "none" and not opts.aft_augment:
            log.warning("aft: the student starts from random weights and trains without augmentation "
                        "(--no-aft-augment), so expect it to trail kdep or stl here")
        psi, dims = self._teacher_features(ctx)
        initial = copy.deepcopy(ctx.student.state_dict())
        grid: dict[str, float] = {}
        if beta is None:
            fit_rows, held_rows = holdout_split(ctx.images.labels)
            if not held_rows:
                raise ConfigError("--beta auto: needs at least 2 training images per class; pass --beta VALUE")
            holdout = Subset(ctx.train_set(augment=False), held_rows)
            for candidate in BETA_GRID:
                name = f"aft-beta{candidate:g}"
                ctx.student.load_state_dict(initial)
                self._train(ctx, name, fit_rows, psi, candidate, learned, distance,
                            lambda: evaluate(ctx.student, holdout, ctx.device))
                # read back from the stage record so that every DDP rank takes the same decision
                grid[f"{candidate:g}"] = artifacts.read_json(ctx.run.stage_dir(name) / "done.json")["val_acc"]
            beta = max(BETA_GRID, key=lambda b: grid[f"{b:g}"])  # ties: the smallest β
            log.info("aft: β = %g chosen on the hold-out (accuracy per β: %s)", beta, grid)
            ctx.student.load_state_dict(initial)
        weights = self._train(ctx, "aft", range(len(ctx.images)), psi, beta, learned, distance,
                              lambda: evaluate(ctx.student, ctx.val, ctx.device))
        if ctx.dist.is_main:
            artifacts.write_json(ctx.run.method_record("aft"), _record(ctx, beta, grid, weights(), dims))
        return ctx.student

    @staticmethod
    def _teacher_features(ctx: TransferContext) -> tuple[torch.Tensor, list[int]]:
        """Pooled pre-logits features of every teacher on the train images (eval transform), concatenated."""
        parts = [probe_features(ctx, teacher, spec)[0] for teacher, spec in zip(ctx.teachers(), ctx.teacher_specs)]
        return torch.cat(parts, 1).to(ctx.device), [p.shape[1] for p in parts]

    @staticmethod
    def _train(ctx: TransferContext, name: str, rows: Sequence[int], psi: torch.Tensor, beta: float,
               learned: bool, distance: Distance, evaluate_fn: Callable[[], float]) -> FeatureWeights:
        student = ctx.student
        weights = FeatureWeights(psi.shape[1], learned)
        # augmented: the student sees a random crop/flip, the kernel compares it with the teacher's cached
        # features of the whole image (a crop of a few pixels barely moves them)
        loader = ctx.loader(Indexed(ctx.train_set(augment=ctx.options.aft_augment), rows))
        groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
        if learned:
            groups.append({"params": [weights.s], "lr": WEIGHTS_LR, "weight_decay": 0.0})
        spec = ctx.spec(AFT_RECIPE, steps_per_epoch=len(loader))
        ctx.trainer.run_stage(Stage(name, {"student": student, "weights": weights},
                                    aft_objective(student, psi, weights, beta, distance), loader, spec,
                                    param_groups=groups, evaluate=evaluate_fn))
        return weights


def _record(ctx: TransferContext, beta: float, grid: dict, mu: torch.Tensor, dims: list[int]) -> dict:
    """aft.json: the chosen β, the hold-out grid and how the learned weights spread over the teachers."""
    per_teacher = [
        {"teacher": spec.timm_name, "features": dim, "weight_mean": round(part.mean().item(), 4),
         "weight_min": round(part.min().item(), 4), "weight_max": round(part.max().item(), 4)}
        for spec, dim, part in zip(ctx.teacher_specs, dims, torch.split(mu.detach().cpu(), dims))
    ]
    return {"beta": beta, "beta_grid_holdout_accuracy": grid or None, "weights": ctx.options.aft_weights,
            "kernel": ctx.options.aft_kernel, "teachers": per_teacher}
