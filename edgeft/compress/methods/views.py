"""A frozen teacher's outputs on a fixed set of augmented views (`--teacher-views N`), computed once.

Distillation on augmented images asks the teacher for every batch; with a foundation teacher at its
own resolution on a CPU that is most of a run (EfficientNet-Lite2 at 128 px: several times the
student's step). With `--teacher-views N`, N augmented views of each distillation image are drawn
once (seeded), kept as uint8 at the student's resolution, and the teacher's outputs on them are
computed once through edgeft's runtimes (compress/teacher_engine.py) and cached in the run
directory. Each time the student meets an image it gets one of its N views, drawn at random, and
the teacher's cached output on that very view: the same pairs as online distillation, only with the
augmentations drawn from N per image instead of afresh (Fast Knowledge Distillation, Shen & Xing
2021, stores its teacher's region-crop labels the same way). With N at least the stage's epochs
the student sees as many distinct views as online.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress.data import ImageDataset, make_loader
from edgeft.compress.methods.base import TransferContext
from edgeft.compress.teacher_engine import frozen_outputs
from edgeft.errors import ConfigError

Output = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class TeacherViews:
    """`views` augmented copies of each image (uint8 [N, V, C, H, W]) and the teacher's output on each
    (float32 [N·V, D], row `i·V + v`)."""

    images: torch.Tensor
    targets: torch.Tensor

    def dataset(self) -> "ViewDataset":
        """The images as a training set: item i is a random view of image i with [0, its target's row]."""
        return ViewDataset(self.images)


class ViewDataset(Dataset):
    """Image i as one of its stored views, drawn with the global torch RNG (like any augmentation),
    labelled `[0, i·V + v]`: the row of the teacher's output on that view."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.images.shape[1]
        v = int(torch.randint(views, ()))
        return _to_float(self.images[i, v]), torch.tensor([0, i * views + v])


class _Flat(Dataset):
    """Every stored view in order, as float images (for the teacher pass)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.flatten(0, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _to_float(self.images[i]), 0


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers: which teacher (adapted or not) the outputs are of."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_views(ctx: TransferContext, teacher: nn.Module, output: Output, name: str, images: ImageDataset,
                  views: int, batch_size: int) -> TeacherViews:
    """`views` augmented views of `images` (their own augmenting transform, seeded by the run's seed) and
    `output(teacher, view)` for each (teacher batches of `batch_size`), cached in the run directory under the
    teacher, `name`, the images, the resolution, the seed and `views`."""
    from safetensors.torch import load_file, save_file

    key = cache_key(fingerprint(teacher), name, *images.paths, str(ctx.image_size), str(ctx.config.seed), str(views))
    path = ctx.run.cache / f"views-{name}-{key}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        return TeacherViews(stored["images"], stored["targets"])
    with torch.random.fork_rng(devices=[]):  # the draws are seeded, and a resumed run's RNG is the same as a fresh one's
        torch.manual_seed(ctx.config.seed)
        drawn = torch.stack([torch.stack([_to_uint8(images[i][0]) for _ in range(views)]) for i in range(len(images))])
        targets = frozen_outputs(teacher, make_loader(_Flat(drawn), batch_size), output, ctx.device)
    if ctx.dist.is_main:
        tensors = {"images": drawn.contiguous(), "targets": targets.contiguous()}
        artifacts.atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return TeacherViews(drawn, targets)


@dataclass
class TeacherTargets:
    """A distillation stage's training images and the teacher's output for each batch of them: looked up in
    `cached` (rows given by the `ViewDataset` labels), or computed by `online` on the batch itself."""

    dataset: Dataset
    cached: torch.Tensor | None
    online: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[labels[:, 1]]
        with torch.no_grad():
            return self.online(images)

    def fitting_set(self, seed: int, device: torch.device, batch_size: int) -> torch.Tensor:
        """The teacher's outputs over the distillation images, to fit a statistic of the targets on: the cached
        views' outputs, or one pass with the images' augmentation drawn from `seed` (the global RNG left alone)."""
        if self.cached is not None:
            return self.cached.cpu()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            return torch.cat([self.online(x.to(device)).float().cpu() for x, _ in make_loader(self.dataset, batch_size)])


def teacher_targets(ctx: TransferContext, teacher: nn.Module, output: Output, name: str, images: ImageDataset,
                    batch_size: int) -> TeacherTargets:
    """`images` and the teacher's outputs on them: from `--teacher-views` cached views, or online (0 views)."""
    online = functools.partial(output, teacher)
    views = ctx.options.teacher_views
    if views < 0:
        raise ConfigError(f"--teacher-views {views}: give a number of views >= 1, or 0 for an online teacher")
    if not views:
        return TeacherTargets(images, None, online)
    cached = teacher_views(ctx, teacher, output, name, images, views, batch_size)
    return TeacherTargets(cached.dataset(), cached.targets.to(ctx.device), online)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _to_float(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255
