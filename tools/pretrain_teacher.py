"""Pretrain a model on the *upstream* classes of the shared CIFAR-10 (the teacher's stand-in pre-training).

    python tools/pretrain_teacher.py --arch resnetv2_50x1_bit --epochs 8

The weights land in .cache/upstream/<arch>/ (a normal edgeft run directory; the weights are
student/model.safetensors). Nothing is recomputed when a finished run is there; a killed run
continues from its last epoch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, UPSTREAM_CLASSES, pretrain_from_scratch, require_cifar  # noqa: E402


def pretrain(arch: str, epochs: int, batch_size: int = 128, lr: float = 0.1, seed: int = 0) -> Path:
    """Trains `arch` from scratch on the upstream classes; returns the run directory."""
    return pretrain_from_scratch(CACHE / "upstream" / arch, arch, require_cifar(), 32, epochs, batch_size, lr, seed,
                                 classes=UPSTREAM_CLASSES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnetv2_50x1_bit")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    print(pretrain(args.arch, args.epochs, args.batch_size, args.lr))


if __name__ == "__main__":
    main()
