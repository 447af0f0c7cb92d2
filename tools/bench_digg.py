"""DIGG benchmark: are the generated images valid, downstream-like and diverse, and how fast are they made?

    python tools/bench_digg.py

Adds the latent transformer to the benchmark pack (tools/bench_irf.py; `prime --resume
--transformer-steps`, the VQGAN is not trained again), generates N_GENERATED images from the standard
few downstream images (10% of the downstream train images, seed 0) and measures, on the
upstream-pretrained teacher's pooled features (resnetv2_50x1_bit, tools/pretrain_teacher.py):
FD(generated, downstream test) vs FD(upstream, downstream test) at the same count (OTA §3.2's claim
that DIGG data follows the downstream distribution), the mean feature distance between samples of
the same source image vs between different real images (diversity), and generation images/s on
this CPU and on CUDA when present. Writes results/digg.{json,md} and results/digg-grid.png
(each row: a source image, then its samples).
"""
from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CACHE, DOWNSTREAM_CLASSES, DOWNSTREAM_FRACTION, RESULTS, UPSTREAM_CLASSES, dump_json, provenance, require_cifar,
)
from bench_irf import PACK, TEACHER_ARCH, TEACHER_EPOCHS, upstream_pack  # noqa: E402

from edgeft import artifacts  # noqa: E402

TRANSFORMER_OPTIONS = {"transformer_steps": 3000, "transformer_layers": 4, "transformer_heads": 4,
                       "transformer_width": 192, "transformer_lr": 3e-4, "transformer_batch_size": 64}
N_GENERATED, N_CUDA, SEED = 5000, 2048, 0
GRID_SOURCES, GRID_SAMPLES = 8, 7


def digg_pack() -> Path:
    """The benchmark pack with its latent transformer (added once; a killed run resumes)."""
    return upstream_pack(TRANSFORMER_OPTIONS)


def upstream_dir() -> Path:
    """The upstream classes' train images as an ImageFolder directory (for `--unlabeled`, extracted once)."""
    out = CACHE / "upstream-train"
    if not (out / "done").exists():
        with zipfile.ZipFile(require_cifar()) as source:
            for name in source.namelist():
                parts = name.split("/")
                if len(parts) >= 3 and parts[-3] == "train" and parts[-2] in UPSTREAM_CLASSES and name.endswith(".jpg"):
                    artifacts.write_bytes(out / parts[-2] / parts[-1], source.read(name))
        artifacts.write_text(out / "done", "")
    return out


def few_and_test():
    """The standard few downstream train images (seed 0) and all downstream test images, 32 px."""
    from edgeft.compress import data as data_mod

    down = data_mod.open_image_folder(str(require_cifar()), classes=DOWNSTREAM_CLASSES)
    few = data_mod.sample_few(down, DOWNSTREAM_FRACTION, None, SEED)
    return (data_mod.ImageDataset(few.store, few.train, 32), data_mod.ImageDataset(down.store, down.val, 32),
            down.classes)


def generate_on(device: str, n: int, few, classes) -> tuple[Path, dict]:
    from edgeft.console import RichProgress
    from edgeft.compress.generative.digg import DiggSpec, Sources, generate
    from edgeft.compress.generative.pack import load_pack

    out = CACHE / "digg" / f"generated-{device}-{n}"
    done = generate(load_pack(str(digg_pack()), device), Sources.of(few, classes), DiggSpec(n, SEED), out, device=device,
                    progress=RichProgress())
    return out, done


def measure(generated: Path, few, test) -> dict:
    """Fréchet distances to the downstream test images and feature distances, on the teacher's features."""
    import torch

    from edgeft.compress import data as data_mod
    from edgeft.compress import models
    from edgeft.compress.generative.digg import generated_images, read_manifest
    from edgeft.compress.generative.frechet import extract_features, frechet_between
    from pretrain_teacher import pretrain

    weights = pretrain(TEACHER_ARCH, TEACHER_EPOCHS) / "student" / "model.safetensors"
    teacher = models.create(models.resolve(TEACHER_ARCH, str(weights), role="teacher"), 0, role="teacher").eval()
    eval_tf = data_mod.build_transform(32, train=False)
    up = data_mod.open_image_folder(str(require_cifar()), classes=UPSTREAM_CLASSES)
    gen = generated_images(generated, 32).with_transform(eval_tf)
    upstream = data_mod.ImageDataset(up.store, random.Random(SEED).sample(up.train, len(gen)), 32, eval_tf)
    feats = {name: extract_features(teacher, ds) for name, ds in
             (("generated", gen), ("upstream", upstream), ("few", few.with_transform(eval_tf)),
              ("test", test.with_transform(eval_tf)))}
    rows = read_manifest(generated)
    by_source: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_source.setdefault(row["source"], []).append(i)
    same = [torch.pdist(feats["generated"][idx]).mean().item() for idx in by_source.values() if len(idx) > 1]
    return {
        "teacher": TEACHER_ARCH, "sizes": {k: len(v) for k, v in feats.items()},
        "fd_to_downstream_test": {k: round(frechet_between(feats[k], feats["test"]), 3)
                                  for k in ("generated", "upstream", "few")},
        "mean_distance": {"same_source_samples": round(sum(same) / len(same), 4),
                          "different_real_images": round(torch.pdist(feats["few"]).mean().item(), 4)},
    }


def grid(generated: Path, few) -> Path:
    """Rows of a source image followed by its first samples."""
    import torch
    from torchvision.utils import save_image

    from edgeft.compress.generative.digg import generated_images, read_manifest

    rows, images = read_manifest(generated), generated_images(generated, 32)
    index = {p: i for i, p in enumerate(few.paths)}
    picture = []
    for source in list(dict.fromkeys(r["source"] for r in rows))[:GRID_SOURCES]:
        samples = [i for i, r in enumerate(rows) if r["source"] == source][:GRID_SAMPLES]
        picture += [few.images[index[source]]] + [images.images[i] for i in samples]
    path = RESULTS / "digg-grid.png"
    tensor = torch.stack(picture).float() / 255
    artifacts.atomic_write(path, lambda tmp: save_image(tensor, tmp, nrow=GRID_SAMPLES + 1, padding=1, format="png"))
    return path


def markdown(result: dict) -> str:
    fd, dist, prov = result["figures"]["fd_to_downstream_test"], result["figures"]["mean_distance"], result["provenance"]
    holds = fd["generated"] < fd["upstream"]
    speed = ", ".join(f"{k}: {v['images_per_s']} images/s" for k, v in result["throughput"].items())
    return "\n".join([
        "# DIGG: generated images from the few downstream images",
        "",
        f"Pack {result['pack']} (transformer: {result['transformer']['architecture']}, held-out NLL "
        f"{result['transformer']['heldout']['nll']} nats per code, uniform {result['transformer']['heldout']['uniform_nll']}). "
        f"{result['figures']['sizes']['generated']} images from {result['figures']['sizes']['few']} few images, seed {SEED}.",
        "",
        "| set | images | FD to the downstream test images |",
        "|---|---|---|",
        *[f"| {k} | {result['figures']['sizes'][k]} | {v:.2f} |" for k, v in fd.items()],
        "",
        f"FD(generated, downstream) < FD(upstream, downstream): **{'holds' if holds else 'does NOT hold'}**.",
        "",
        f"Mean teacher-feature distance between samples of the same source image: {dist['same_source_samples']:.3f}; "
        f"between different real few images: {dist['different_real_images']:.3f}.",
        "",
        f"Generation throughput: {speed}.",
        "",
        "![sources (first column) and their DIGG samples](digg-grid.png)",
        "",
        f"Command: `{prov['command']}`; seed {prov['seed']}; hardware {prov['hardware']}; versions {prov['versions']}; "
        f"commit {prov['commit']}.",
        "",
    ])


def main() -> None:
    import argparse

    import torch

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    require_cifar()
    few, test, classes = few_and_test()
    generated, cpu = generate_on("cpu", N_GENERATED, few, classes)
    throughput = {"cpu": cpu}
    if torch.cuda.is_available():
        throughput["cuda"] = generate_on("cuda", N_CUDA, few, classes)[1]
    meta = artifacts.read_json(PACK / "pack.json")
    result = {"pack": str(PACK.relative_to(CACHE.parent)), "transformer": meta["transformer"],
              "throughput": throughput, "figures": measure(generated, few, test),
              "grid": grid(generated, few).name, "provenance": provenance(SEED)}
    dump_json(RESULTS / "digg.json", result)
    artifacts.write_text(RESULTS / "digg.md", markdown(result))
    print(RESULTS / "digg.md")


if __name__ == "__main__":
    main()
