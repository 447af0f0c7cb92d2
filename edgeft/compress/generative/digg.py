"""DIGG, downstream image-guided generation (OTA §3.2, Fig. 3): many new images from few real ones.

Each sample takes one downstream image (round-robin over the sources), encodes it to VQGAN codes,
masks a random part of the code grid — a `box` (one rectangle, e.g. the bottom half) or `block`s
(scattered squares of ¼ of the grid side) covering a share drawn uniformly from `mask_ratio` —,
completes the masked codes with the pack's latent transformer (kept codes teacher-forced, masked
ones sampled in raster order) and decodes. Everything random about sample `i` (source, mask,
sampling uniforms) comes from `numpy.random.default_rng([seed, i])`, and batch `b` holds samples
`b·B … b·B + B − 1`; shard `s/n` makes the batches `b ≡ s (mod n)`, so the shards of a run together
are exactly the unsharded output.

The output directory is an ImageFolder (`<class>/<index>.png`, the source image's class) plus
`manifest.jsonl` (`manifest-<s>-of-<n>.jsonl` per shard): one row per sample with its file, source
image, mask (a raster-order '0'/'1' string over the code grid) and masked share. A batch's PNGs are
written atomically before its rows are appended, so a killed run resumes at its first missing batch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from edgeft import artifacts
from edgeft.artifacts import cache_key
from edgeft.compress import data as data_mod
from edgeft.compress.data import ImageDataset, ImageStore, Sample
from edgeft.compress.generative.pack import Pack, load_pack
from edgeft.compress.generative.transformer import complete
from edgeft.compress.resumable import NullProgress, Progress
from edgeft.compress.train import resolve_device
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)

MASK_SHAPES = ("box", "block")
SETTINGS = "generate.json"
ENCODE_BATCH = 256


@dataclass(frozen=True)
class DiggSpec:
    """What to generate: how many samples, from which seed, with which masks and sampling."""

    n: int
    seed: int = 0
    mask_shapes: tuple[str, ...] = MASK_SHAPES
    mask_ratio: tuple[float, ...] = (0.25, 0.75)
    temperature: float = 1.0
    top_k: int = 100
    batch_size: int = 64

    def check(self) -> "DiggSpec":
        """Itself, or a ConfigError naming the flag that is wrong."""
        if self.n < 1:
            raise ConfigError(f"--n {self.n}: must be at least 1")
        bad = [s for s in self.mask_shapes if s not in MASK_SHAPES] or ([] if self.mask_shapes else ["(none)"])
        if bad:
            raise ConfigError(f"--mask-shapes {','.join(self.mask_shapes)}: '{bad[0]}' is not one of {', '.join(MASK_SHAPES)}")
        ratio = tuple(float(r) for r in self.mask_ratio) * (2 if len(self.mask_ratio) == 1 else 1)
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1] <= 1:
            raise ConfigError(f"--mask-ratio {','.join(map(str, self.mask_ratio))}: give MIN,MAX with 0 < MIN <= MAX <= 1")
        if not (self.temperature > 0 and self.top_k >= 1 and self.batch_size >= 1):
            raise ConfigError("--temperature must be > 0, --top-k and --batch-size at least 1")
        return DiggSpec(self.n, self.seed, tuple(self.mask_shapes), ratio, self.temperature, self.top_k,
                        self.batch_size)


@dataclass
class Sources:
    """The downstream images to complete: uint8 [3, H, W] images, their class indices and file names."""

    images: list[torch.Tensor]
    labels: list[int]
    classes: list[str]
    paths: list[str]

    @classmethod
    def of(cls, dataset: ImageDataset, classes: list[str]) -> "Sources":
        return cls(dataset.images, dataset.labels.tolist(), classes, dataset.paths)


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard i/n` → (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: give i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: needs 0 <= i < n")
    return index, count


def random_mask(rng: np.random.Generator, h: int, w: int, shape: str, ratio: float) -> np.ndarray:
    """A bool [h, w] mask (True = resample) covering about `ratio` of the grid, at least one code."""
    k = max(1, round(ratio * h * w))
    mask = np.zeros((h, w), dtype=bool)
    if shape == "box":
        bh = int(rng.integers(math.ceil(k / w), min(h, k) + 1))
        bw = min(w, max(1, round(k / bh)))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask[top:top + bh, left:left + bw] = True
        return mask
    side = max(1, min(h, w) // 4)
    cells = [(r, c) for r in range(0, h, side) for c in range(0, w, side)]
    for i in rng.permutation(len(cells)):
        if mask.sum() >= k:
            break
        r, c = cells[i]
        mask[r:r + side, c:c + side] = True
    return mask


def plan(spec: DiggSpec, index: int, sources: int, h: int, w: int) -> dict:
    """Sample `index`'s source, mask shape, mask and sampling uniforms (all from rng([seed, index]))."""
    rng = np.random.default_rng([spec.seed, index])
    shape = spec.mask_shapes[int(rng.integers(len(spec.mask_shapes)))]
    mask = random_mask(rng, h, w, shape, float(rng.uniform(*spec.mask_ratio)))
    return {"source": index % sources, "shape": shape, "mask": mask.reshape(-1), "uniform": rng.random(h * w)}


def manifest_name(shard: tuple[int, int]) -> str:
    return "manifest.jsonl" if shard[1] == 1 else f"manifest-{shard[0]}-of-{shard[1]}.jsonl"


def read_manifest(out: str | Path) -> list[dict]:
    """Every finished sample of every shard in `out`, by index."""
    rows = {r["index"]: r for path in sorted(Path(out).glob("manifest*.jsonl")) for r in _rows(path)}
    return [rows[i] for i in sorted(rows)]


def generated_images(out: str | Path, image_size: int) -> ImageDataset:
    """The generated images of `out` with their source's class index (no transform)."""
    rows = read_manifest(out)
    return ImageDataset(ImageStore(out), [Sample(r["file"], r["label"]) for r in rows], image_size,
                        what="generated images")


@torch.no_grad()
def generate(pack: Pack, sources: Sources, spec: DiggSpec, out: str | Path, shard: tuple[int, int] = (0, 1),
             device: torch.device | str = "cpu", progress: Progress | None = None) -> dict:
    """Writes this shard's samples of `spec` into `out` (resuming a killed run); returns counts and images/s."""
    spec, out = spec.check(), Path(out)
    transformer = pack.require_transformer().to(device)
    vqgan = pack.vqgan.to(device)
    size = int(pack.meta["image_size"])
    h = w = size // vqgan.cfg.downsampling
    if transformer.cfg.block_size != h * w:
        raise ConfigError(f"--pack {pack.path}: its transformer models {transformer.cfg.block_size} codes, "
                          f"its VQGAN makes {h * w} at {size} px")
    if not sources.images:
        raise ConfigError("--data: no source images to complete")
    _check_settings(out, pack, sources, spec, size)
    codes = _encode(vqgan, sources.images, size, device)
    manifest = out / manifest_name(shard)
    done_rows = _rows(manifest)
    if manifest.exists():
        artifacts.write_jsonl(manifest, done_rows)  # drops a line torn by a kill
    done = {r["index"] for r in done_rows}
    batches = [b for b in range(math.ceil(spec.n / spec.batch_size)) if b % shard[1] == shard[0]]
    progress = progress or NullProgress()
    progress.start(f"generate {shard[0]}/{shard[1]}", sum(len(_batch(spec, b)) for b in batches))
    made, busy = 0, 0.0
    for b in batches:
        indices = _batch(spec, b)
        if done.issuperset(indices):
            progress.advance(len(indices))
            continue
        began = time.time()
        plans = [plan(spec, i, len(sources.images), h, w) for i in indices]
        rows = _make_batch(vqgan, transformer, codes, plans, indices, sources, spec, out, (h, w), device)
        _append(manifest, rows)
        busy += time.time() - began
        made += len(rows)
        progress.advance(len(rows), images_per_s=made / busy)
    progress.finish()
    return {"out": str(out), "shard": f"{shard[0]}/{shard[1]}", "made": made,
            "images": len(read_manifest(out)), "seconds": round(busy, 2),
            "images_per_s": round(made / busy, 2) if busy else None, "device": str(device)}


def _make_batch(vqgan, transformer, codes: torch.Tensor, plans: list[dict], indices: range, sources: Sources,
                spec: DiggSpec, out: Path, grid: tuple[int, int], device) -> list[dict]:
    """Completes and decodes one batch, writes its PNGs; returns its manifest rows."""
    from PIL import Image

    src = codes[[p["source"] for p in plans]].to(device)
    mask = torch.from_numpy(np.stack([p["mask"] for p in plans])).to(device)
    uniform = torch.from_numpy(np.stack([p["uniform"] for p in plans])).to(device)
    filled = complete(transformer, src, mask, uniform, spec.temperature, spec.top_k)
    images = vqgan.decode_codes(filled.view(-1, *grid))
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    rows = []
    for index, p, array in zip(indices, plans, pixels):
        label = sources.labels[p["source"]]
        file = f"{sources.classes[label]}/{index:07d}.png"
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        artifacts.atomic_write(out / file, lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG"))
        rows.append({"index": index, "file": file, "label": label, "source": sources.paths[p["source"]],
                     "shape": p["shape"], "masked": round(float(p["mask"].mean()), 4),
                     "mask": "".join("1" if m else "0" for m in p["mask"])})
    return rows


def _encode(vqgan, images: list[torch.Tensor], size: int, device) -> torch.Tensor:
    """Code indices [N, L] of the source images, centre-cropped squares at the pack's image size."""
    squares = torch.stack([TF.center_crop(TF.resize(im, size, antialias=True), size) for im in images])
    chunks = [vqgan.encode(x.to(device).float() / 127.5 - 1)[2].flatten(1).cpu() for x in squares.split(ENCODE_BATCH)]
    return torch.cat(chunks)


def _batch(spec: DiggSpec, b: int) -> range:
    return range(b * spec.batch_size, min(spec.n, (b + 1) * spec.batch_size))


def _check_settings(out: Path, pack: Pack, sources: Sources, spec: DiggSpec, size: int) -> None:
    """Records what `out` is generated from; a later run or shard into `out` must match it."""
    settings = {"pack": pack.digest, "transformer": pack.meta["transformer"]["sha256"], "image_size": size,
                "sources": cache_key(*sources.paths), "source_images": len(sources.images),
                **json.loads(json.dumps(asdict(spec)))}
    path = out / SETTINGS
    if path.exists():
        saved = artifacts.read_json(path)
        if saved != settings:
            differ = next(k for k in settings if saved.get(k) != settings[k])
            raise ConfigError(f"--out {out}: holds images generated with another {differ} "
                              f"({saved.get(differ)} vs {settings[differ]}); choose another --out")
        return
    artifacts.write_json(path, settings)


def _rows(path: Path) -> list[dict]:
    """The complete rows of a manifest (a last line torn by a kill is dropped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    """Appends a finished batch's rows and syncs them: the manifest is the run's commit log."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
        handle.flush()
        os.fsync(handle.fileno())


def run_generate(cfg, progress: Progress | None = None) -> dict:
    """`edgeft generate`: DIGG samples of the few training images of `cfg.data` (a GenerateConfig) into `cfg.out`."""
    if not cfg.out:
        raise ConfigError("--out: give the directory to write the generated images to")
    shard = parse_shard(cfg.shard)
    spec = DiggSpec(cfg.n, cfg.seed, cfg.mask_shapes, cfg.mask_ratio, cfg.temperature, cfg.top_k, cfg.batch_size).check()
    device = resolve_device(cfg.device)
    pack = load_pack(cfg.pack, device)
    pack.require_transformer()
    splits = data_mod.sample_few(data_mod.open_image_folder(cfg.data, cfg.val_fraction, cfg.classes),
                                 cfg.fraction, cfg.shots, cfg.seed)
    images = ImageDataset(splits.store, splits.train, int(pack.meta["image_size"]), what="source images")
    return generate(pack, Sources.of(images, splits.classes), spec, cfg.out, shard, device, progress)
