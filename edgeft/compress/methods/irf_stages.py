"""IRF's stages (OTA §3.1, §4.1.1) as functions over an explicit model, shared by irf, ota and digg-irf.

`adapt(ctx, spec, model)` runs them on `model` (described by `spec`): **priming** (the VQGAN pack of
`edgeft prime`, loaded frozen), **assembling** (the train images re-represented `Dec(Quant(Enc(x)))`,
cached in the run directory), **delivering** (backbone frozen, the head trained on the
re-represented images) and **calibration** (every parameter fine-tuned on the originals). It never
changes the context's student or teachers: the caller says which model is adapted (irf and ota: a
fresh copy of the first teacher with a new head; digg-irf: the distilled student).

Delivering trains the head on backbone features cached once with the eval transform (the paper's
random square crop is dropped there: a frozen backbone makes this a linear probe, and caching makes
the lr search cheap). `--deliver-data` / `--calib-data` give the Table 4 ablations.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress import models
from edgeft.compress.data import ImageDataset, build_transform
from edgeft.compress.generative.pack import Pack, load_pack
from edgeft.compress.generative.vqgan import rerepresent_images
from edgeft.compress.methods.base import Recipe, TransferContext
from edgeft.compress.methods.common import (evaluate, features_of, holdout_split, set_classifier,
                                           train_linear_head)
from edgeft.compress.train import Stage, TrainSpec
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

# OTA §4.1.1: SGD-Nesterov m 0.9, multistep decay; delivering wd 1e-5, lr from [1, 1e-3];
# calibration lr from 4 log-spaced values in [1e-2, 1e-5], wd from 3 in [1e-3, 1e-5].
DELIVER = Recipe(epochs=60, lr=0.1, optimizer="sgd", schedule="multistep", weight_decay=1e-5)
CALIBRATE = Recipe(epochs=30, lr=1e-2, optimizer="sgd", schedule="multistep", weight_decay=1e-4)
DELIVER_LR_GRID = (1.0, 0.1, 0.01, 0.001)
CALIBRATE_LR_GRID = (1e-2, 1e-3, 1e-4, 1e-5)
CALIBRATE_WD_GRID = (1e-3, 1e-4, 1e-5)


class MixedViews(Dataset):
    """Each access returns the original or the re-represented view of an image, at random (p = ½)."""

    def __init__(self, original: Dataset, rec: Dataset) -> None:
        self.original, self.rec = original, rec

    def __len__(self) -> int:
        return len(self.original)

    def __getitem__(self, index: int):
        return (self.rec if torch.rand(()) < 0.5 else self.original)[index]


@dataclass(frozen=True)
class Views:
    """What IRF trains on: the train images (eval transform), their re-representations, the pack, the modes."""

    original: ImageDataset
    rec: ImageDataset
    pack: Pack
    deliver_mode: str
    calib_mode: str


def rerepresent(ctx: TransferContext, pack: Pack, dataset: ImageDataset, name: str) -> ImageDataset:
    """Assembling: `dataset`'s images through the frozen VQGAN at the pack's resolution (cached as uint8 in
    the run directory), returned with the eval transform like `ctx.train_set(augment=False)`."""
    from safetensors.torch import load_file, save_file

    work_size = pack.meta.get("image_size")
    path = ctx.run.cache / f"irf-rec-{cache_key(pack.digest, name, str(ctx.image_size), str(work_size))}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        images = [stored[f"{i}"] for i in range(len(dataset))]
    else:
        images = rerepresent_images(pack.vqgan, dataset.images, ctx.device, work_size=work_size)
        if ctx.dist.is_main:
            tensors = {f"{i}": t.contiguous() for i, t in enumerate(images)}
            artifacts.atomic_write(path, lambda tmp: save_file(tensors, tmp))
    view = dataset.with_transform(build_transform(ctx.image_size, train=False))
    view.images = images
    return view


def head_for(ctx: TransferContext, spec: models.ModelSpec) -> models.Normalized:
    """A fresh copy of the model of `spec` (the first teacher) with a new task head, to adapt."""
    if len(ctx.teacher_specs) > 1:
        log.warning("irf: adapts the first teacher only (%s)", ctx.teacher_specs[0].name)
    torch.manual_seed(ctx.config.seed)
    return models.create(spec, num_classes=len(ctx.classes), role="teacher").to(ctx.device)


def adapt(ctx: TransferContext, spec: models.ModelSpec, model: nn.Module | None = None) -> tuple[nn.Module, float]:
    """IRF's four stages on `model` (trained in place; None: `head_for(spec)`, made after the pack is
    loaded); writes irf.json and returns the adapted model with its validation accuracy."""
    cfg, opts = ctx.config, ctx.options
    if opts.search and (cfg.lr is not None or cfg.weight_decay is not None):
        raise ConfigError("--search picks lr and weight decay itself: drop --lr/--weight-decay or --search")
    pack = load_pack(opts.pack, ctx.device)  # stage 1, priming: trained once by `edgeft prime`
    model = head_for(ctx, spec) if model is None else model
    original = ctx.train_set(augment=False)
    views = Views(original, rerepresent(ctx, pack, ctx.images, "train"), pack, opts.deliver_data, opts.calib_data)  # stage 2
    grid: dict = {}
    deliver_lr, calib = DELIVER.lr, CALIBRATE
    if opts.search:
        deliver_lr, calib, grid = search(ctx, model, spec, views)
    deliver_acc = deliver(ctx, model, spec, views, range(len(ctx.images)), None, deliver_lr, "irf-deliver")
    calib_spec = ctx.spec(calib, steps_per_epoch=len(ctx.loader(original)))
    calibrate(ctx, model, calib_set(ctx, views), ctx.val, calib_spec, "irf-calibrate")
    accuracy = evaluate(model, ctx.val, ctx.device)
    if ctx.dist.is_main:
        artifacts.write_json(ctx.run.method_record("irf"), {
            "adapted": spec.display_name,
            "pack": {"path": str(pack.path), "sha256": pack.digest, "image_size": pack.meta.get("image_size"),
                     "heldout_psnr_db": pack.meta.get("heldout", {}).get("psnr_db")},
            "image_size": ctx.image_size, "deliver_data": opts.deliver_data, "calib_data": opts.calib_data,
            "deliver_lr": deliver_lr, "calibrate_lr": calib_spec.lr, "calibrate_weight_decay": calib_spec.weight_decay,
            "accuracy_after_delivering": deliver_acc, "accuracy": accuracy,
            "search_holdout_accuracy": grid or None,
        })
    return model, accuracy


def adapt_first(ctx: TransferContext) -> tuple[nn.Module, models.ModelSpec, float]:
    """IRF on the model that irf and ota adapt: the first teacher (a fresh copy with a new head), else the
    student itself; returns the adapted model, its spec and its validation accuracy."""
    spec = ctx.teacher_specs[0] if ctx.teacher_specs else ctx.student_spec
    model, accuracy = adapt(ctx, spec, None if ctx.teacher_specs else ctx.student)
    return model, spec, accuracy


def deliver(ctx: TransferContext, model: nn.Module, spec: models.ModelSpec, views: Views, rows: Sequence[int],
            held: Sequence[int] | None, lr: float, stage: str) -> float | None:
    """Stage 3: the head on frozen-backbone features of the delivering images; validated on original images
    (the validation split, or the `held` rows of train)."""
    name = f"{spec.timm_name}|{spec.weights}|{ctx.image_size}"
    sources = {"rec": [views.rec], "original": [views.original], "mixed": [views.original, views.rec]}
    feats = [features_of(ctx, model, v, cache_key(name, views.pack.digest if v is views.rec else "original", "train"))
             for v in sources[views.deliver_mode]]
    rows = list(rows)
    train = torch.cat([f[rows] for f in feats])
    labels = ctx.images.labels[rows].repeat(len(feats))
    if held is None:
        val = features_of(ctx, model, ctx.val, cache_key(name, "val"))
        val_labels = ctx.val.labels
    else:
        val = features_of(ctx, model, views.original, cache_key(name, "original", "train"))[list(held)]
        val_labels = ctx.images.labels[list(held)]
    recipe = Recipe(DELIVER.epochs, lr, DELIVER.optimizer, DELIVER.schedule, DELIVER.weight_decay)
    head, acc = train_linear_head(ctx, stage, train, labels, val, val_labels, recipe=recipe)
    set_classifier(model, head)
    return acc


def calibrate(ctx: TransferContext, model: nn.Module, train: Dataset, val: Dataset, spec: TrainSpec,
              stage: str) -> float | None:
    """Stage 4: every parameter, cross-entropy on `train` (augmented)."""

    def loss(images: torch.Tensor, labels: torch.Tensor):
        logits = model(images)
        return F.cross_entropy(logits, labels), logits

    metrics = ctx.trainer.run_stage(Stage(stage, {"model": model}, loss, ctx.loader(train), spec,
                                          evaluate=lambda: evaluate(model, val, ctx.device)))
    return metrics.get("val_acc")


def search(ctx: TransferContext, model: nn.Module, spec: models.ModelSpec,
           views: Views) -> tuple[float, Recipe, dict]:
    """The paper's grids on a stratified 10% hold-out of train: delivering lr, then calibration lr (wd 1e-4)
    and wd at that lr — 4 + 4 + 2 trainings instead of the full 4 × 12. `model` ends as it started."""
    fit, held = holdout_split(ctx.images.labels)
    if not held:
        raise ConfigError("--search: needs at least 2 training images per class")
    initial = copy.deepcopy(model.state_dict())
    grid: dict = {"deliver_lr": {}, "calibrate": {}}
    heads = {}
    for lr in DELIVER_LR_GRID:
        model.load_state_dict(initial)
        grid["deliver_lr"][f"{lr:g}"] = deliver(ctx, model, spec, views, fit, held, lr, f"irf-search-deliver-lr{lr:g}")
        heads[lr] = copy.deepcopy(model.model.get_classifier().state_dict())
    deliver_lr = max(DELIVER_LR_GRID, key=lambda v: grid["deliver_lr"][f"{v:g}"])  # ties: the first (largest)
    train, val = Subset(calib_set(ctx, views), fit), Subset(views.original, held)
    per_epoch = len(ctx.loader(train))

    def trial(lr: float, wd: float) -> float:
        key = f"lr{lr:g}-wd{wd:g}"
        if key not in grid["calibrate"]:
            model.load_state_dict(initial)
            model.model.get_classifier().load_state_dict(heads[deliver_lr])
            recipe = Recipe(CALIBRATE.epochs, lr, CALIBRATE.optimizer, CALIBRATE.schedule, wd)
            grid["calibrate"][key] = calibrate(ctx, model, train, val, ctx.spec(recipe, per_epoch),
                                               f"irf-search-calibrate-{key}")
        return grid["calibrate"][key]

    lr = max(CALIBRATE_LR_GRID, key=lambda v: trial(v, CALIBRATE.weight_decay))
    wd = max(CALIBRATE_WD_GRID, key=lambda v: trial(lr, v))
    model.load_state_dict(initial)
    log.info("irf: delivering lr %g, calibration lr %g wd %g chosen on the hold-out", deliver_lr, lr, wd)
    return deliver_lr, Recipe(CALIBRATE.epochs, lr, CALIBRATE.optimizer, CALIBRATE.schedule, wd), grid


def calib_set(ctx: TransferContext, views: Views) -> Dataset:
    """Calibration images with the training augmentation: the originals, the re-represented ones, or either at random."""
    original = ctx.train_set(augment=True)
    rec_aug = views.rec.with_transform(build_transform(ctx.image_size, True))
    return {"original": original, "rec": rec_aug, "mixed": MixedViews(original, rec_aug)}[views.calib_mode]
