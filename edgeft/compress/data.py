"""Image data: ImageFolder trees or zips, stratified few-data sampling, in-memory datasets.

Few-data sets are small, so each split is decoded once into memory (resized so its short
side equals the training size); augmentation then runs on uint8 tensors.
"""
from __future__ import annotations

import io
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from edgeft.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
MAX_CORRUPT_FRACTION = 0.05
DEMO_DATA = Path(__file__).resolve().parent.parent / "demo" / "downstream.zip"
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what a corrupt or non-image file raises
VAL_SPLIT_SEED = 0  # the held-out split of a flat tree stays fixed across --seed values


class ImageStore:
    """Reads files from a directory or a .zip by relative path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"--data {path}: no such file or directory")
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise DataError(f"--data {path}: not a directory or a .zip of one")
            names = zipfile.ZipFile(self.path).namelist()
            self._files = sorted(n for n in names if not n.endswith("/"))
            self._dirs = sorted(n.rstrip("/") for n in names if n.endswith("/"))
        else:
            entries = list(self.path.rglob("*"))
            self._files = sorted(p.relative_to(self.path).as_posix() for p in entries if p.is_file())
            self._dirs = sorted(p.relative_to(self.path).as_posix() for p in entries if p.is_dir())

    def files(self) -> list[str]:
        return self._files

    def dirs(self) -> list[str]:
        """Folders (also empty ones), so that an empty class folder is noticed."""
        return self._dirs

    def read(self, name: str) -> bytes:
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        if self._zip is None:  # opened lazily so that the store pickles into workers
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}


@dataclass(frozen=True)
class Sample:
    """One image file and its class index."""

    path: str
    label: int


@dataclass
class DataSplits:
    """Class names, the train/val file lists, and the store they are read from."""

    store: ImageStore
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    ignored_files: int = 0

    def describe(self, train: ImageDataset, val: ImageDataset) -> dict:
        """data_split.json: the images `train` and `val` decoded, and those they skipped as unreadable."""
        return {
            "source": str(self.store.path),
            "classes": self.classes,
            "train": list(train.paths),
            "val": list(val.paths),
            "skipped": train.skipped + val.skipped,
            "ignored_non_image_files": self.ignored_files,
        }


def resolve_data_path(data: str) -> Path:
    """`demo` → the bundled few-shot set; anything else is a path."""
    if data == "demo":
        if not DEMO_DATA.exists():
            raise DataError(f"the bundled demo data is missing ({DEMO_DATA}); reinstall edgeft")
        return DEMO_DATA
    return Path(data)


def open_image_folder(
    data: str, val_fraction: float = 0.2, classes: Sequence[str] = ()
) -> DataSplits:
    """Opens an ImageFolder tree (train/ + val/ or test/, or flat class folders) or its zip."""
    store = ImageStore(resolve_data_path(data))
    files = _strip_common_root(store.files(), store.dirs())
    if not any(not rel.endswith("/") for rel, _ in files):
        raise DataError(f"--data {data}: contains no files")
    tops = {f.split("/", 1)[0] for f, _ in files if "/" in f}
    eval_top = "val" if "val" in tops else "test" if "test" in tops else None
    if "train" in tops and eval_top:
        train_by_class, ignored_a = _group_by_class(files, "train", data)
        val_by_class, ignored_b = _group_by_class(files, eval_top, data)
        names = _select_classes(sorted(train_by_class), classes, data)
        missing = [c for c in names if c not in val_by_class]
        if missing:
            raise DataError(f"--data {data}: class '{missing[0]}' has no images under {eval_top}/")
        ignored = ignored_a + ignored_b
    else:
        by_class, ignored = _group_by_class(files, None, data)
        names = _select_classes(sorted(by_class), classes, data)
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1")
        train_by_class, val_by_class = _split_flat(by_class, names, val_fraction, data)
    train = [Sample(p, i) for i, c in enumerate(names) for p in train_by_class[c]]
    val = [Sample(p, i) for i, c in enumerate(names) for p in val_by_class[c]]
    return DataSplits(store, names, train, val, ignored)


def sample_few(
    splits: DataSplits, fraction: float | None, shots: int | None, seed: int
) -> DataSplits:
    """Stratified few-data sampling of the train split: a fraction or K shots per class."""
    if fraction is not None and shots is not None:
        raise DataError("--fraction and --shots: give one of them, not both")
    if fraction is None and shots is None:
        return splits
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise DataError(f"--fraction {fraction}: must be in (0, 1]")
    if shots is not None and shots < 1:
        raise DataError(f"--shots {shots}: must be at least 1")
    rng = random.Random(seed)
    chosen: list[Sample] = []
    for label, name in enumerate(splits.classes):
        pool = sorted(s.path for s in splits.train if s.label == label)
        count = round(fraction * len(pool)) if fraction is not None else shots
        if count == 0:
            raise DataError(
                f"--fraction {fraction} leaves class '{name}' empty ({len(pool)} images); "
                "raise --fraction or use --shots"
            )
        if count > len(pool):
            raise DataError(f"--shots {shots}: class '{name}' has only {len(pool)} training images")
        chosen += [Sample(p, label) for p in rng.sample(pool, count)]
    return DataSplits(splits.store, splits.classes, chosen, splits.val, splits.ignored_files)


class ImageDataset(Dataset):
    """A split decoded into memory (short side resized to `image_size`), with a transform."""

    def __init__(
        self,
        store: ImageStore,
        samples: Sequence[Sample],
        image_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        what: str = "images",
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.transform = transform
        self.images: list[torch.Tensor] = []
        labels: list[int] = []
        self.paths: list[str] = []
        bad: list[dict[str, str]] = []  # {file, reason} of each unreadable image
        for i, sample in enumerate(samples):
            try:
                image = _decode(store, sample.path, image_size)
            except UNREADABLE as exc:
                bad.append({"file": sample.path, "reason": f"{type(exc).__name__}: {exc}"[:200]})
            else:
                self.images.append(image)
                labels.append(sample.label)
                self.paths.append(sample.path)
            if on_progress:
                on_progress(i + 1, len(samples))
        if samples and len(bad) / len(samples) > MAX_CORRUPT_FRACTION:
            raise DataError(
                f"--data {store.path}: {len(bad)} of {len(samples)} {what} are corrupt or not "
                f"images (e.g. {bad[0]['file']}); more than {MAX_CORRUPT_FRACTION:.0%}, fix the data"
            )
        if bad:
            log.warning("skipped %d corrupt %s (e.g. %s)", len(bad), what, bad[0]["file"])
        self.skipped = bad
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        """A view of the same decoded images with another transform."""
        view = object.__new__(ImageDataset)
        view.__dict__.update(self.__dict__)
        view.transform = transform
        return view


def build_transform(image_size: int, train: bool) -> v2.Compose:
    """Train: reflect-padded random crop + flip; eval: centre crop. Output in [0, 1]; models normalise."""
    steps: list = []
    if train:
        steps += [
            v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps.append(v2.CenterCrop(image_size))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class EpochSampler(Sampler[int]):
    """Seeded per-epoch shuffling, sharded across DDP ranks (padded to equal length)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.size))
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        per_rank = -(-self.size // self.world)
        order += order[: per_rank * self.world - len(order)]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return -(-self.size // self.world)


def make_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler | None = None, workers: int = 0
) -> DataLoader:
    """A DataLoader over `dataset`; without a sampler, in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
    )


def _decode(store: ImageStore, name: str, image_size: int) -> torch.Tensor:
    """One image as uint8 CHW, short side `image_size`; raises one of UNREADABLE for a bad file."""
    with Image.open(io.BytesIO(store.read(name))) as img:
        img = img.convert("RGB")
        scale = image_size / min(img.size)
        if scale != 1.0:
            size = (max(image_size, round(img.width * scale)), max(image_size, round(img.height * scale)))
            img = img.resize(size, Image.BICUBIC)
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _strip_common_root(files: list[str], dirs: list[str]) -> list[tuple[str, str]]:
    """(path relative to the ImageFolder root, stored path), dropping shared top folders.

    Folders come back with a trailing '/', so that empty class folders can be reported.
    """
    parts = [f.split("/") for f in files if not _is_hidden(f)]
    images = [p for p in parts if p[-1].lower().endswith(IMAGE_EXTENSIONS)]  # a README beside the root is no level
    prefix = 0
    while images and all(len(p) > prefix + 2 for p in images) and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    entries = [("/".join(p[prefix:]), "/".join(p)) for p in parts]
    for folder in dirs:
        p = folder.split("/")
        if len(p) > prefix and not _is_hidden(folder):
            entries.append(("/".join(p[prefix:]) + "/", folder + "/"))
    return entries


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def _group_by_class(
    files: list[tuple[str, str]], top: str | None, data: str
) -> tuple[dict[str, list[str]], int]:
    by_class: dict[str, list[str]] = {}
    ignored = 0
    for rel, stored in files:
        parts = rel.rstrip("/").split("/")
        if top is not None:
            if parts[0] != top:
                continue
            parts = parts[1:]
        if rel.endswith("/"):
            if len(parts) == 1:
                by_class.setdefault(parts[0], [])
            continue
        if len(parts) < 2:
            continue  # files beside the class folders (README, labels.txt) are not samples
        cls = parts[0]
        by_class.setdefault(cls, [])
        if rel.lower().endswith(IMAGE_EXTENSIONS):
            by_class[cls].append(stored)
        else:
            ignored += 1
    where = f"{top}/" if top else ""
    if not by_class:
        raise DataError(f"--data {data}: no class folders found under {where or 'the root'}")
    for cls, paths in by_class.items():
        if not paths:
            raise DataError(f"--data {data}: class folder '{where}{cls}' has no images")
    return by_class, ignored


def _select_classes(found: list[str], wanted: Sequence[str], data: str) -> list[str]:
    if wanted:
        unknown = [c for c in wanted if c not in found]
        if unknown:
            raise DataError(f"--classes: '{unknown[0]}' is not a class of {data} (has: {', '.join(found)})")
        found = sorted(wanted)
    if len(found) < 2:
        raise DataError(f"--data {data}: found {len(found)} class; classification needs at least 2")
    return found


def _split_flat(
    by_class: dict[str, list[str]], names: list[str], val_fraction: float, data: str
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    rng = random.Random(VAL_SPLIT_SEED)
    train, val = {}, {}
    for cls in names:
        paths = sorted(by_class[cls])
        rng.shuffle(paths)
        n_val = max(1, round(val_fraction * len(paths)))
        if n_val >= len(paths):
            raise DataError(
                f"--data {data}: class '{cls}' has {len(paths)} image(s), too few to hold out "
                f"--val-fraction {val_fraction} for validation; add images or a val/ folder"
            )
        val[cls], train[cls] = sorted(paths[:n_val]), sorted(paths[n_val:])
    return train, val


def typical_short_side(splits: DataSplits, count: int = 64) -> int | None:
    """Median short side of up to `count` training images (headers only), or None when none can be read.

    The student's default resolution: a student gains nothing from images upsampled past the data's
    own resolution, while it pays for every pixel on the edge device.
    """
    rng = random.Random(0)
    chosen = rng.sample(splits.train, min(count, len(splits.train)))
    sides = []
    for sample in chosen:
        try:
            with Image.open(io.BytesIO(splits.store.read(sample.path))) as img:
                sides.append(min(img.size))
        except (OSError, UnidentifiedImageError):
            continue
    return sorted(sides)[len(sides) // 2] if sides else None
