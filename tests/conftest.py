"""Shared fixtures: tiny, learnable image folders built on the fly (no network, no shared data)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 16) -> Image.Image:
    """A noisy image of one colour: classes are easy to tell apart, so a few steps learn them."""
    base = np.array(colour, dtype=np.float32)
    noise = rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_folder(root: Path, per_class: int, layout: str = "split", size: int = 16, seed: int = 0) -> Path:
    """Writes an ImageFolder tree: layout 'split' (train/ + val/) or 'flat' (class folders only)."""
    rng = np.random.default_rng(seed)
    splits = {"train": per_class, "val": max(2, per_class // 2)} if layout == "split" else {"": per_class}
    for split, count in splits.items():
        for name, colour in COLOURS.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                make_image(colour, rng, size).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """train/ (8 per class) + val/ (4 per class), three colour classes, 16×16 PNGs."""
    return write_folder(tmp_path / "data", per_class=8)


@pytest.fixture
def tiny_flat(tmp_path: Path) -> Path:
    """Flat class-per-folder tree, 10 images per class."""
    return write_folder(tmp_path / "flat", per_class=10, layout="flat")


@pytest.fixture
def tiny_zip(tmp_path: Path, tiny_data: Path) -> Path:
    """The tiny_data tree as a zip under a top folder."""
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(tiny_data.rglob("*.png")):
            archive.write(file, "tiny/" + file.relative_to(tiny_data).as_posix())
    return path


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    """A VQGAN pack primed for 4 steps on tiny upstream images (16 px, 8 channels); its data is `<pack>/../upstream`."""
    from edgeft.compress.generative.prime import prime
    from edgeft.config import PrimeConfig

    torch.set_num_threads(1)  # as in every test: a resumed prime must match it bit for bit
    root = tmp_path_factory.mktemp("tiny_pack")
    data = write_folder(root / "upstream", per_class=8, seed=1)
    prime(PrimeConfig(data=str(data), out=str(root / "pack"), **TINY_PRIME))
    return root / "pack"


TINY_PRIME = {"image_size": 16, "steps": 4, "batch_size": 8, "channels": 8, "codebook_size": 16, "holdout": 4,
              "disc_start": 2}
TINY_TRANSFORMER = {"transformer_steps": 6, "transformer_layers": 1, "transformer_heads": 2, "transformer_width": 16,
                    "transformer_batch_size": 8}


@pytest.fixture(scope="session")
def tiny_digg_pack(tiny_pack, tmp_path_factory) -> Path:
    """tiny_pack (VQGAN only) with a latent transformer added afterwards by `prime --resume --transformer-steps`."""
    import shutil

    from edgeft.compress.generative.prime import prime
    from edgeft.config import PrimeConfig

    root = tmp_path_factory.mktemp("tiny_digg_pack")
    shutil.copytree(tiny_pack, root / "pack")
    shutil.copytree(tiny_pack.parent / "pack-work", root / "pack-work")
    prime(PrimeConfig(out=str(root / "pack"), resume=True, **TINY_TRANSFORMER), explicit=dict(TINY_TRANSFORMER))
    return root / "pack"


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    """CLI arguments for a seconds-long compress run with a random tiny teacher and student."""
    return [
        "compress", "--teacher", "resnet10t", "--teacher-weights", "none", "--student", "resnet10t",
        "--student-weights", "none", "--data", str(data), "--image-size", "16", "--epochs", "2",
        "--batch-size", "8", "--no-baseline", "--out", str(out), *extra,
    ]
