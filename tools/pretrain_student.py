"""Supervised pre-training of a student on tiny-imagenet-200 train: the "ImageNet-pretrained" student stand-in.

    python tools/pretrain_student.py --arch resnet18 --image-size 32 --epochs 15

Benchmark protocol "imagenet-teacher" (tools/bench_transfer.py) starts its pretrained students
from these weights. The run lands in .cache/student-pretrain/<arch>-<size>px-<epochs>ep/ (an edgeft
run directory, weights in student/model.safetensors), evaluated on tiny-imagenet's official val
split. Nothing is recomputed when a finished run is there; a killed run continues from its last
checkpoint (`--resume` of the one training loop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, pretrain_from_scratch, require_shared  # noqa: E402

TINY_IMAGENET = "tiny-imagenet-200.zip"


def pretrained_student(arch: str, image_size: int, epochs: int, batch_size: int = 128, lr: float = 0.1,
                       seed: int = 0) -> Path:
    """Trains `arch` from scratch on tiny-imagenet-200 train (or returns the finished run); its run directory."""
    out = CACHE / "student-pretrain" / f"{arch}-{image_size}px-{epochs}ep"
    return pretrain_from_scratch(out, arch, require_shared(TINY_IMAGENET), image_size, epochs, batch_size, lr, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    print(pretrained_student(args.arch, args.image_size, args.epochs, args.batch_size, args.lr))


if __name__ == "__main__":
    main()
