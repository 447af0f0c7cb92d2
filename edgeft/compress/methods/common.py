"""Steps that several methods share: evaluation, cached features, linear heads, teacher adaptation,
fine-tuning, feature distillation, choice checks and the hold-out split (methods never import each other)."""
from __future__ import annotations

import logging
import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress.data import ImageDataset, make_loader
from edgeft.compress.methods.base import Recipe, TransferContext
from edgeft.compress.methods.views import teacher_targets
from edgeft.compress.models import ModelSpec
from edgeft.compress.teacher_engine import frozen_outputs
from edgeft.compress.train import Stage

log = logging.getLogger(__name__)

PROBE_RECIPE = Recipe(epochs=60, lr=0.1, optimizer="sgd", schedule="cosine", weight_decay=1e-4)
FINETUNE = Recipe(epochs=30, lr=0.05, optimizer="sgd", schedule="cosine", weight_decay=5e-4)
FEATURE_KD = Recipe(epochs=30, lr=1.0, optimizer="sgd", schedule="cosine", weight_decay=1e-5)  # OTA §4.2's distillation
EVAL_BATCH = 256
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 42


@torch.no_grad()
def predictions(model: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, label) of every image of `dataset`, in order."""
    if isinstance(model, nn.Module):
        model.eval()
    pairs = [(model(images.to(device)).argmax(1).cpu(), labels) for images, labels in make_loader(dataset, EVAL_BATCH)]
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat([p for p, _ in pairs]), torch.cat([torch.as_tensor(y) for _, y in pairs])


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, device: torch.device) -> float:
    """Top-1 accuracy of `model` (images → logits) on `dataset`."""
    return top1(*predictions(model, dataset, device))


def top1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of correct predictions, rounded as every accuracy of a run is (0 for no images)."""
    return round((predicted == labels).float().mean().item(), 5) if len(labels) else 0.0


def mean_per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over classes of each class's top-1 accuracy (for unbalanced test sets such as Caltech-101)."""
    per_class = [(predicted[labels == c] == c).float().mean().item() for c in labels.unique()]
    return round(sum(per_class) / max(len(per_class), 1), 5)


@torch.no_grad()
def features_of(ctx: TransferContext, model: nn.Module, dataset: Dataset, key: str) -> torch.Tensor:
    """`model.features(images)` in eval mode over `dataset` in order, cached in the run directory under `key`.

    On a CPU they are computed through OpenVINO / ONNX Runtime (checked against PyTorch), else PyTorch."""
    from safetensors.torch import load_file, save_file

    path = ctx.run.cache / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    # the model is fixed while its features are taken: through the fastest runtime (compress.teacher_engine)
    features = frozen_outputs(model, make_loader(dataset, EVAL_BATCH), _features, ctx.device)
    if ctx.dist.is_main:
        artifacts.atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, tmp))
    return features


def _features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.features(images)


def train_linear_head(
    ctx: TransferContext, stage: str, train_features: torch.Tensor, labels: torch.Tensor,
    val_features: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
    recipe: Recipe = PROBE_RECIPE,
) -> tuple[nn.Linear, float | None]:
    """Trains a linear classifier on frozen features (the linear-probe step) through the one loop."""
    head = nn.Linear(train_features.shape[1], len(ctx.classes))
    data = TensorDataset(train_features, labels)
    loader = ctx.loader(data, batch_size=min(256, len(data)))

    def evaluate_head() -> float:
        with torch.no_grad():
            logits = head(val_features.to(ctx.device))
        return round((logits.argmax(1).cpu() == val_labels).float().mean().item(), 5)

    def loss(x: torch.Tensor, y: torch.Tensor):
        logits = head(x)
        return F.cross_entropy(logits, y), logits

    has_val = val_features is not None
    spec = ctx.spec(recipe, overridable=False)
    metrics = ctx.trainer.run_stage(
        Stage(stage, {"head": head}, loss, loader, spec, evaluate=evaluate_head if has_val else None)
    )
    return head.to(ctx.device), metrics.get("val_acc")


def set_classifier(model: nn.Module, head: nn.Linear) -> None:
    """Copies a trained linear head into a timm model's classifier (a Linear, or BiT's 1×1 conv)."""
    classifier = model.model.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(head.weight.view_as(classifier.weight))
        classifier.bias.copy_(head.bias)


def probe_features(ctx: TransferContext, model, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the train (eval transform) and val images, cached per model and weights."""
    name = f"{spec.timm_name}|{spec.weights}|{spec.input_size}|{ctx.image_size}"
    train = features_of(ctx, model, ctx.train_set(augment=False), cache_key(name, "train"))
    val = features_of(ctx, model, ctx.val, cache_key(name, "val"))
    return train, val


class Indexed(Dataset):
    """Rows `indices` of a labelled dataset as (image, [label, row]): the row finds the cached teacher features."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.indices[i]
        image, label = self.dataset[row]
        return image, torch.tensor([int(label), row])


class WithHead(nn.Module):
    """A frozen backbone plus a trained linear head: images → logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))


def adapted_teacher(ctx: TransferContext) -> WithHead:
    """The first teacher with a task head trained on its frozen features (linear probe); cached per run.

    Its validation accuracy is recorded as the teacher's accuracy in summary.json.
    """
    if "adapted_teacher" in ctx.notes:
        return ctx.notes["adapted_teacher"]
    teacher = ctx.teacher()
    train, val = probe_features(ctx, teacher, ctx.teacher_specs[0])
    head, acc = train_linear_head(ctx, "teacher-probe", train, ctx.images.labels, val, ctx.val.labels)
    adapted = WithHead(teacher, head).eval()
    ctx.notes["adapted_teacher"] = adapted
    ctx.notes["teacher_accuracy"] = acc
    ctx.notes["teacher_evaluated_as"] = "linear probe"
    return adapted


def holdout_split(labels: torch.Tensor, fraction: float = HOLDOUT_FRACTION,
                  seed: int = HOLDOUT_SEED) -> tuple[list[int], list[int]]:
    """Stratified (fit, hold-out) row indices: `fraction` of each class (at least one) is held out."""
    rng = random.Random(seed)
    held: list[int] = []
    for label in sorted(set(labels.tolist())):
        rows = [i for i, value in enumerate(labels.tolist()) if value == label]
        if len(rows) > 1:
            held += rng.sample(rows, max(1, round(fraction * len(rows))))
    chosen = set(held)
    return [i for i in range(len(labels)) if i not in chosen], sorted(held)


def finetune(ctx: TransferContext, stage: str = "finetune", recipe: Recipe = FINETUNE) -> nn.Module:
    """Trains every student parameter with cross-entropy on the few labelled images."""
    student = ctx.student
    loader = ctx.loader(ctx.train_set(augment=True))

    def loss(images: torch.Tensor, labels: torch.Tensor):
        logits = student(images)
        return F.cross_entropy(logits, labels), logits

    spec = ctx.spec(recipe, steps_per_epoch=len(loader))
    ctx.trainer.run_stage(Stage(stage, {"student": student}, loss, loader, spec, evaluate=val_accuracy(ctx, student)))
    return student


def val_accuracy(ctx: TransferContext, model: nn.Module) -> Callable[[], float]:
    """A stage's evaluate callback: `model`'s accuracy on the validation images."""
    return lambda: evaluate(model, ctx.val, ctx.device)


class Standardise(nn.Module):
    """`(x − mean) / std` per channel, with the statistics of `features` (rows: samples)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", features.mean(0))
        self.register_buffer("std", features.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def distill_features(ctx: TransferContext, teacher: nn.Module, images: ImageDataset, stage: str = "distill-features",
                     recipe: Recipe = FEATURE_KD, project: bool = True) -> None:
    """L2 (MSE) from the student's pooled features to the frozen teacher's on `images` (labels unused), the
    teacher's standardised per channel (statistics over the distillation images): one recipe for every teacher.

    On a raw foundation model's features (1,280 channels of variance ~0.1) the mean MSE gave the student steps
    ~1/1,000 of what it needed, and it learned their mean only (results/transfer-imagenet.md).

    A linear projector maps the student's features to the teacher's width — always when `project` (FitNets'
    regressor), else only when the widths differ (OTA §4.2); it is trained with the student and dropped after.
    With `--teacher-views N` the teacher's features of N augmented views per image are computed once
    (methods/views.py); else the teacher sees every augmented batch.
    """
    student = ctx.student
    width = student.num_features, teacher.num_features
    projector = nn.Linear(*width) if project or width[0] != width[1] else nn.Identity()
    targets = teacher_targets(ctx, teacher, _features, "features", images, EVAL_BATCH)
    standardise = Standardise(targets.fitting_set(ctx.config.seed, ctx.device, EVAL_BATCH)).to(ctx.device)
    loader = ctx.loader(targets.dataset)

    def loss(images: torch.Tensor, labels: torch.Tensor):
        return F.mse_loss(projector(student.features(images)), standardise(targets(images, labels))), None

    spec = ctx.distill_spec(recipe, steps_per_epoch=len(loader))
    ctx.trainer.run_stage(Stage(stage, {"student": student, "projector": projector}, loss, loader, spec,
                                frozen_eval_modules=[teacher]))
