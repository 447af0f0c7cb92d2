"""The distillation images of kdep, digg, ota and digg-irf, and the DIGG distillation stage (OTA §3.2, §4.2).

The images are chosen by `--kd-data` (the paper's Table 5 rows):
- `digg` — `--n-generated` DIGG images (default 10 per few image) made from the few training images
  with the pack's VQGAN and latent transformer (compress/generative/digg.py), labels unused; cached
  in the run directory under a key of the pack, its transformer, the seed, the count, the mask and
  sampling options and the source images, so `--resume` does not generate them again;
- `upstream` — as many images drawn (with the seed) from `--unlabeled DIR`, the upstream images;
- `raw` — the few images themselves (the paper's "KD on 10% raw data").

The loss is L2 between the teacher's and the student's pooled backbone last-layer features, through
a linear projector only when their widths differ (dropped after): fkd's `distill_features`, with the
paper's SGD lr 1.0 and wd 1e-5 for 10 epochs (the paper: 70).
"""
from __future__ import annotations

import json
import logging
import random
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress.data import IMAGE_EXTENSIONS, ImageDataset, ImageStore, Sample, build_transform
from edgeft.compress.generative.digg import DiggSpec, Sources, generate, generated_images
from edgeft.compress.generative.pack import load_pack
from edgeft.compress.methods.base import TransferContext
from edgeft.compress.methods.common import FEATURE_KD, distill_features
from edgeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DIGG_KD = replace(FEATURE_KD, epochs=10)
GENERATED_PER_IMAGE = 10


def digg_images(ctx: TransferContext, pack_arg: str | None, flag: str = "--pack ") -> ImageDataset:
    """The run's DIGG images of its few training images (generated once into the run's cache; no transform).

    `flag` is how the user gave the pack (`--pack ` or `--unlabeled digg:`), for the error messages.
    """
    if not pack_arg:
        raise ConfigError(f"{flag.strip()}: DIGG needs a pack with a latent transformer; make one with `edgeft prime "
                          "--data UPSTREAM --out PACK --transformer-steps 3000` or pass demo")
    pack = load_pack(pack_arg, ctx.device, label=f"{flag}{pack_arg}")
    pack.require_transformer(f"{flag}{pack_arg}")
    opts = ctx.options
    spec = DiggSpec(opts.n_generated or GENERATED_PER_IMAGE * len(ctx.images), ctx.config.seed, opts.mask_shapes,
                    opts.mask_ratio, opts.temperature, opts.top_k).check()
    key = cache_key(pack.digest, pack.meta["transformer"]["sha256"], json.dumps(asdict(spec)), *ctx.images.paths)
    out = ctx.run.cache / f"digg-{key}"
    record = out / "done.json"
    if ctx.dist.is_main and not record.exists():
        summary = generate(pack, Sources.of(ctx.images, ctx.classes), spec, out, device=ctx.device,
                           progress=ctx.trainer.progress)
        artifacts.write_json(record, {**summary, "pack": str(pack.path), "spec": asdict(spec)})
    ctx.dist.barrier()
    ctx.notes["digg"] = artifacts.read_json(record)
    return generated_images(out, ctx.image_size)


def kd_images(ctx: TransferContext) -> Dataset:
    """The `--kd-data` distillation images, with the training augmentation."""
    opts = ctx.options
    if opts.kd_data == "raw":
        return ctx.train_set(augment=True)
    if opts.kd_data == "digg":
        images = digg_images(ctx, opts.pack)
    else:
        if not opts.unlabeled or opts.unlabeled.startswith("digg:"):
            raise ConfigError("--kd-data upstream: give the upstream images with --unlabeled DIR (directory or .zip)")
        count = opts.n_generated or GENERATED_PER_IMAGE * len(ctx.images)
        images = unlabeled_images(opts.unlabeled, ctx.image_size, count, ctx.config.seed)
    return images.with_transform(build_transform(ctx.image_size, train=True))


def digg_distill(ctx: TransferContext, teacher: nn.Module) -> None:
    """Stage `digg-distill`: the teacher's pooled features into the student on the `--kd-data` images."""
    images = kd_images(ctx)
    distill_features(ctx, teacher, images, "digg-distill", DIGG_KD, project=False)
    if ctx.dist.is_main:
        artifacts.write_json(ctx.run.method_record("digg"), {
            "kd_data": ctx.options.kd_data, "distillation_images": len(images),
            "generation": ctx.notes.get("digg"), "teacher_width": teacher.num_features,
            "student_width": ctx.student.num_features,
        })


def unlabeled_images(path: str, image_size: int, count: int | None = None, seed: int = 0) -> ImageDataset:
    """Every image file under a directory or .zip (labels unused, all 0), or `count` of them drawn with `seed`."""
    where = Path(path)
    if not where.exists():
        raise DataError(f"--unlabeled {path}: no such file or directory")
    if where.is_file() and not zipfile.is_zipfile(where):
        raise DataError(f"--unlabeled {path}: not a directory or a .zip of images")
    store = ImageStore(where)
    files = [f for f in store.files() if f.lower().endswith(IMAGE_EXTENSIONS)
             and not any(part.startswith(".") or part == "__MACOSX" for part in f.split("/"))]
    if len(files) < 2:
        raise DataError(f"--unlabeled {path}: found {len(files)} image(s); KDEP needs a set of images to distil on")
    if count is not None:
        files = sorted(random.Random(seed).sample(files, min(count, len(files))))
    return ImageDataset(store, [Sample(f, 0) for f in files], image_size, what="unlabeled images")
