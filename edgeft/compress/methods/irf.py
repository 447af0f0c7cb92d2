"""IRF, Image Re-representation Fine-tuning (OTA, Wu et al. 2022, §3.1 and §4.1.1).

Four stages, each resumable: **priming** (the VQGAN pack of `edgeft prime`, loaded frozen),
**assembling** (downstream train images re-represented `Dec(Quant(Enc(x)))`, cached in the run
directory), **delivering** (backbone frozen, the new head trained on the re-represented images)
and **calibration** (every parameter fine-tuned on the original images). The model adapted is
the teacher (the first `--teacher`; without one, the `--student` model itself), so the run's
model is the task-adapted teacher that `--teacher-from RUN_DIR` hands to other methods.

Delivering trains the head on backbone features cached once with the eval transform (the
paper's random square crop is dropped there: a frozen backbone makes this a linear probe, and
caching makes the lr search cheap). `--deliver-data` / `--calib-data` give the Table 4 ablations.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from edgeft import artifacts
from edgeft.artifacts import RunDir
from edgeft.compress import models
from edgeft.compress.data import ImageDataset, build_transform
from edgeft.compress.generative.pack import Pack, load_pack
from edgeft.compress.generative.vqgan import rerepresent_images
from edgeft.compress.methods.aft import check_choice, holdout_split
from edgeft.compress.methods.base import Method, Recipe, TransferContext
from edgeft.compress.methods.common import cache_key, evaluate, features_of, set_classifier, train_linear_head
from edgeft.compress.train import Stage
from edgeft.errors import ConfigError, EdgeftError

log = logging.getLogger(__name__)

# OTA §4.1.1: SGD-Nesterov m 0.9, multistep decay; delivering wd 1e-5, lr from [1, 1e-3];
# calibration lr from 4 log-spaced values in [1e-2, 1e-5], wd from 3 in [1e-3, 1e-5].
DELIVER = Recipe(epochs=60, lr=0.1, optimizer="sgd", schedule="multistep", weight_decay=1e-5)
CALIBRATE = Recipe(epochs=30, lr=1e-2, optimizer="sgd", schedule="multistep", weight_decay=1e-4)
DELIVER_LR_GRID = (1.0, 0.1, 0.01, 0.001)
CALIBRATE_LR_GRID = (1e-2, 1e-3, 1e-4, 1e-5)
CALIBRATE_WD_GRID = (1e-3, 1e-4, 1e-5)
DELIVER_MODES = ("rec", "original", "mixed")
CALIB_MODES = ("original", "rec", "mixed")


class MixedViews(Dataset):
    """Each access returns the original or the re-represented view of an image, at random (p = ½)."""

    def __init__(self, original: Dataset, rec: Dataset) -> None:
        self.original, self.rec = original, rec

    def __len__(self) -> int:
        return len(self.original)

    def __getitem__(self, index: int):
        return (self.rec if torch.rand(()) < 0.5 else self.original)[index]


def rerepresent(ctx: TransferContext, pack: Pack, dataset: ImageDataset, name: str) -> ImageDataset:
    """Assembling: `dataset`'s images through the frozen VQGAN (cached as uint8 in the run directory),
    returned with the eval transform like `ctx.train_set(augment=False)`."""
    from safetensors.torch import load_file, save_file

    path = ctx.run.cache / f"irf-rec-{cache_key(pack.digest, name, str(ctx.image_size))}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        images = [stored[f"{i}"] for i in range(len(dataset))]
    else:
        images = rerepresent_images(pack.vqgan, dataset.images, ctx.device)
        if ctx.dist.is_main:
            tensors = {f"{i}": t.contiguous() for i, t in enumerate(images)}
            artifacts.atomic_write(path, lambda tmp: save_file(tensors, tmp))
    view = dataset.with_transform(build_transform(ctx.image_size, train=False))
    view.images = images
    return view


def teacher_spec_from_run(run_dir: str) -> models.ModelSpec:
    """`--teacher-from RUN_DIR`: the model of a finished run (e.g. irf's adapted teacher) as a teacher spec."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"--teacher-from {run_dir}: no such run directory")
    try:
        card = run.read_card()
    except EdgeftError as exc:
        raise ConfigError(f"--teacher-from {run_dir}: {exc}") from None
    return models.ModelSpec(f"{card.method}:{run.root.name}", card.arch, card.arch, str(run.student_weights),
                            tuple(card.mean), tuple(card.std), card.input_size[-1])


class ImageRerepresentationFineTuning(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        cfg = ctx.config
        deliver_mode = check_choice(cfg.deliver_data, DELIVER_MODES, "--deliver-data")
        calib_mode = check_choice(cfg.calib_data, CALIB_MODES, "--calib-data")
        if cfg.search and (cfg.lr is not None or cfg.weight_decay is not None):
            raise ConfigError("--search picks lr and weight decay itself: drop --lr/--weight-decay or --search")
        pack = load_pack(cfg.pack, ctx.device)  # stage 1, priming: trained once by `edgeft prime`
        model = _model_to_adapt(ctx)
        original = ctx.train_set(augment=False)
        rec = rerepresent(ctx, pack, ctx.images, "train")  # stage 2, assembling
        initial = copy.deepcopy(model.state_dict())
        grid: dict = {}
        deliver_lr, calib = DELIVER.lr, CALIBRATE
        if cfg.search:
            deliver_lr, calib, grid = self._search(ctx, model, initial, original, rec, deliver_mode, calib_mode, pack)
        deliver_acc = self._deliver(ctx, model, original, rec, deliver_mode, range(len(ctx.images)), None,
                                    deliver_lr, "irf-deliver", pack)
        calib_spec = ctx.spec(calib, steps_per_epoch=len(ctx.loader(original)))
        self._calibrate(ctx, model, _calib_set(ctx, rec, calib_mode), ctx.val, calib_spec, "irf-calibrate")
        accuracy = evaluate(model, ctx.val, ctx.device)
        ctx.notes["teacher_accuracy"] = accuracy
        ctx.notes["teacher_evaluated_as"] = "IRF-adapted"
        if ctx.dist.is_main:
            artifacts.write_json(ctx.run.root / "irf.json", {
                "adapted": ctx.student_spec.display_name,
                "pack": {"path": str(pack.path), "sha256": pack.digest, "image_size": pack.meta.get("image_size"),
                         "heldout_psnr_db": pack.meta.get("heldout", {}).get("psnr_db")},
                "image_size": ctx.image_size, "deliver_data": deliver_mode, "calib_data": calib_mode,
                "deliver_lr": deliver_lr, "calibrate_lr": calib_spec.lr, "calibrate_weight_decay": calib_spec.weight_decay,
                "accuracy_after_delivering": deliver_acc, "accuracy": accuracy,
                "search_holdout_accuracy": grid or None,
            })
        return model

    @staticmethod
    def _deliver(ctx: TransferContext, model, original: ImageDataset, rec: ImageDataset, mode: str,
                 rows: Sequence[int], held: Sequence[int] | None, lr: float, stage: str, pack: Pack) -> float | None:
        """Stage 3: the head on frozen-backbone features of the `mode` images; validated on original images."""
        name = f"{ctx.student_spec.timm_name}|{ctx.student_spec.weights}|{ctx.image_size}"
        views = {"rec": [rec], "original": [original], "mixed": [original, rec]}[mode]
        feats = [features_of(ctx, model, v, cache_key(name, pack.digest if v is rec else "original", "train"))
                 for v in views]
        rows = list(rows)
        train = torch.cat([f[rows] for f in feats])
        labels = ctx.images.labels[rows].repeat(len(feats))
        if held is None:
            val = features_of(ctx, model, ctx.val, cache_key(name, "val"))
            val_labels = ctx.val.labels
        else:
            val = features_of(ctx, model, original, cache_key(name, "original", "train"))[list(held)]
            val_labels = ctx.images.labels[list(held)]
        recipe = Recipe(DELIVER.epochs, lr, DELIVER.optimizer, DELIVER.schedule, DELIVER.weight_decay)
        head, acc = train_linear_head(ctx, stage, train, labels, val, val_labels, recipe=recipe)
        set_classifier(model, head)
        return acc

    @staticmethod
    def _calibrate(ctx: TransferContext, model, train: Dataset, val: Dataset, spec, stage: str) -> float:
        """Stage 4: every parameter, cross-entropy on `train` (augmented)."""

        def loss(images: torch.Tensor, labels: torch.Tensor):
            logits = model(images)
            return F.cross_entropy(logits, labels), logits

        metrics = ctx.trainer.run_stage(Stage(stage, {"model": model}, loss, ctx.loader(train), spec,
                                              evaluate=lambda: evaluate(model, val, ctx.device)))
        return metrics.get("val_acc")

    def _search(self, ctx: TransferContext, model, initial: dict, original, rec, deliver_mode: str, calib_mode: str,
                pack: Pack) -> tuple[float, Recipe, dict]:
        """The paper's grids on a stratified 10% hold-out of train: delivering lr, then calibration lr (wd 1e-4)
        and wd at that lr — 4 + 4 + 2 trainings instead of the full 4 × 12."""
        fit, held = holdout_split(ctx.images.labels)
        if not held:
            raise ConfigError("--search: needs at least 2 training images per class")
        grid: dict = {"deliver_lr": {}, "calibrate": {}}
        heads = {}
        for lr in DELIVER_LR_GRID:
            model.load_state_dict(initial)
            grid["deliver_lr"][f"{lr:g}"] = self._deliver(ctx, model, original, rec, deliver_mode, fit, held, lr,
                                                           f"irf-search-deliver-lr{lr:g}", pack)
            heads[lr] = copy.deepcopy(model.model.get_classifier().state_dict())
        deliver_lr = max(DELIVER_LR_GRID, key=lambda v: grid["deliver_lr"][f"{v:g}"])  # ties: the first (largest)
        train, val = Subset(_calib_set(ctx, rec, calib_mode), fit), Subset(original, held)
        per_epoch = len(ctx.loader(train))

        def trial(lr: float, wd: float) -> float:
            key = f"lr{lr:g}-wd{wd:g}"
            if key not in grid["calibrate"]:
                model.load_state_dict(initial)
                model.model.get_classifier().load_state_dict(heads[deliver_lr])
                recipe = Recipe(CALIBRATE.epochs, lr, CALIBRATE.optimizer, CALIBRATE.schedule, wd)
                grid["calibrate"][key] = self._calibrate(ctx, model, train, val, ctx.spec(recipe, per_epoch),
                                                         f"irf-search-calibrate-{key}")
            return grid["calibrate"][key]

        lr = max(CALIBRATE_LR_GRID, key=lambda v: trial(v, CALIBRATE.weight_decay))
        wd = max(CALIBRATE_WD_GRID, key=lambda v: trial(lr, v))
        model.load_state_dict(initial)
        log.info("irf: delivering lr %g, calibration lr %g wd %g chosen on the hold-out", deliver_lr, lr, wd)
        return deliver_lr, Recipe(CALIBRATE.epochs, lr, CALIBRATE.optimizer, CALIBRATE.schedule, wd), grid


def _model_to_adapt(ctx: TransferContext) -> nn.Module:
    """The first teacher with a new task head (it becomes the run's model), or the student without a teacher."""
    if ctx.teacher_specs:
        if len(ctx.teacher_specs) > 1:
            log.warning("irf: adapts the first teacher only (%s)", ctx.teacher_specs[0].name)
        spec = ctx.teacher_specs[0]
        torch.manual_seed(ctx.config.seed)
        ctx.student = models.create(spec, num_classes=len(ctx.classes), role="teacher").to(ctx.device)
        ctx.student_spec = spec
    return ctx.student


def _calib_set(ctx: TransferContext, rec: ImageDataset, mode: str) -> Dataset:
    """Calibration images with the training augmentation: the originals, the re-represented ones, or either at random."""
    original = ctx.train_set(augment=True)
    rec_aug = rec.with_transform(build_transform(ctx.image_size, True))
    return {"original": original, "rec": rec_aug, "mixed": MixedViews(original, rec_aug)}[mode]
