"""Produce the bundled demo: a small upstream-pretrained teacher and a few-shot downstream set.

    python tools/make_demo.py

Writes edgeft/demo/teacher.safetensors (fp16, <= 15 MB) + teacher.json, and
edgeft/demo/downstream.zip (<= 3 MB): train/ with SHOTS images per downstream class and
test/ with TEST_PER_CLASS held-out images per class, from the shared CIFAR-10.
"""
from __future__ import annotations

import io
import random
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOWNSTREAM_CLASSES, ROOT, UPSTREAM_CLASSES, require_cifar  # noqa: E402
from pretrain_teacher import pretrain  # noqa: E402

from edgeft import artifacts  # noqa: E402

DEMO = ROOT / "edgeft" / "demo"
DEMO_ARCH = "resnet10t"
DEMO_EPOCHS = 15
SHOTS, TEST_PER_CLASS, SEED = 300, 100, 0
MAX_TEACHER_BYTES, MAX_DATA_BYTES = 15 * 2**20, 3 * 2**20


def make_teacher() -> Path:
    """fp16 copy of the upstream-pretrained demo teacher plus its card."""
    from safetensors.torch import load_file, save_file

    run = pretrain(DEMO_ARCH, DEMO_EPOCHS)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(run / "student" / "model.safetensors")).items()}
    path = DEMO / "teacher.safetensors"
    artifacts.atomic_write(path, lambda tmp: save_file(state, tmp))
    card = artifacts.read_json(run / "student" / "card.json")
    summary = artifacts.read_json(run / "summary.json")
    artifacts.write_json(DEMO / "teacher.json", {
        "arch": DEMO_ARCH,
        "input_size": card["input_size"],
        "mean": card["mean"],
        "std": card["std"],
        "upstream_classes": list(UPSTREAM_CLASSES),
        "upstream_accuracy": summary["student"]["accuracy"],
        "made_by": "tools/make_demo.py (tools/pretrain_teacher.py on the CIFAR-10 upstream classes)",
    })
    assert path.stat().st_size <= MAX_TEACHER_BYTES, f"{path} is {path.stat().st_size} bytes"
    return path


def make_data() -> Path:
    """A zip with train/<class>/ (SHOTS each) and test/<class>/ (TEST_PER_CLASS each)."""
    rng = random.Random(SEED)
    source = zipfile.ZipFile(require_cifar())
    names = source.namelist()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for split, count in (("train", SHOTS), ("test", TEST_PER_CLASS)):
            for cls in DOWNSTREAM_CLASSES:
                pool = sorted(n for n in names if f"/{split}/{cls}/" in n and n.endswith(".jpg"))
                for name in sorted(rng.sample(pool, count)):
                    out.writestr(f"{split}/{cls}/{Path(name).name}", source.read(name))
    path = artifacts.write_bytes(DEMO / "downstream.zip", buffer.getvalue())
    assert path.stat().st_size <= MAX_DATA_BYTES, f"{path} is {path.stat().st_size} bytes"
    return path


def main() -> None:
    for path in (make_data(), make_teacher()):
        print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
