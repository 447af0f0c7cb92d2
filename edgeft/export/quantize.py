"""The one image reader behind calibration and validation, and ONNX Runtime static INT8.

Images come from the run itself: `data_split.json` names the source (a folder or a zip) and
the train/val files inside it. They are decoded the way `edgeft compress` evaluates (short
side resized to the input size with bicubic filtering, centre crop), kept as uint8 in
`calib.npz` / `ref.npz`, and normalised with the card's mean/std only when fed to a model.

INT8 is static Q/DQ (`quant_pre_process` first, per-channel symmetric int8 weights) in the
scheme the CPU runs fast (`cpu_scheme`, from the flags in /proc/cpuinfo):

- **VNNI** (avx512_vnni, avx_vnni, amx_int8): uint8 activations (asymmetric), int8 weights
  — MLAS's U8S8 kernels use VPDPBUSD directly. Measured on an AMD EPYC with AVX512-VNNI,
  resnet18 at 224 px, batch 1, 2 threads, a loaded shared host (tools/bench_inference.py,
  results/inference.md, and the runs that chose it): U8S8 Q/DQ 2.4–3.0× faster than fp32;
  QOperator U8S8, per-tensor weights and `reduce_range` within the run-to-run noise of it
  (2.3–2.8×), so none of them is taken: QOperator is a format only ONNX Runtime reads,
  per-tensor and 7-bit weights cost accuracy. Signed int8 activations — onnxruntime 1.32's
  `quantize_static` default, and symmetric S8S8, edgeft's INT8 before — are 1.05–1.25×:
  that CPU has no S8S8 dot product, so ONNX Runtime widens them.
- **x86 without VNNI** (AVX2/AVX-512 only): U8S8 with `reduce_range` (7-bit weights), since
  VPMADDUBSW saturates its int16 sums on full-range weights.
- **elsewhere** (ARM: dot-product kernels for both signs): symmetric signed S8S8.

The scheme is the exporting host's and is recorded with the engine (its export record,
`quantization.scheme`): a full-range U8S8 engine run on an x86 CPU without VNNI risks that
saturation, so export INT8 on the kind of CPU that runs it.

TensorRT's explicit quantization takes symmetric signed int8 only, so its ONNX is always
`TENSORRT_SCHEME`, whatever the host. Graph optimisation happens when a session loads
(ONNX Runtime fuses Q/DQ pairs into QLinearConv/QGemm itself); nothing is pre-optimised on
disk, so the file stays portable across ONNX Runtime versions.
"""
from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from edgeft.artifacts import RunDir, StudentCard, atomic_write, read_json
from edgeft.errors import DataError
from edgeft.runtime.fingerprint import cpu_isa

log = logging.getLogger(__name__)

SAMPLE_SEED = 0  # which images calibrate and validate stays fixed across exports of a run


SAVED = {"train": "calib.npz", "val": "ref.npz"}  # where each split's decoded images are kept


def read_split(run: RunDir, split: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` images of `split` ('train' or 'val') as uint8 N×3×size×size, with labels.

    A seeded shuffle picks the images so that every class is represented; unreadable images
    are skipped with a warning. Where the image source is gone (a run copied to a device),
    the images saved by an earlier export (calib.npz / ref.npz) stand in for it.
    """
    if not run.data_split.exists():
        raise DataError(f"{run.data_split}: not found; the run lists no images to calibrate or validate with")
    split_info = read_json(run.data_split)
    classes, files = split_info.get("classes", []), split_info.get(split, [])
    source = Path(split_info.get("source", ""))
    if not source.exists():
        return _saved_images(run, split, count, size, source)
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(files))
    chosen = [files[i] for i in order[:count]]
    images, labels, bad = [], [], 0
    with _Opener(source) as opener:
        for name in chosen:
            image = decode(opener.read(name), size)
            if image is None:
                bad += 1
                continue
            images.append(image)
            labels.append(label_of(name, classes))
    if bad:
        log.warning("skipped %d unreadable %s images of %s", bad, split, source)
    if not images:
        return np.zeros((0, 3, size, size), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _saved_images(run: RunDir, split: str, count: int, size: int, source: Path) -> tuple[np.ndarray, np.ndarray]:
    saved = run.root / SAVED[split]
    if saved.exists():
        with np.load(saved) as data:
            images, labels = data["images"][:count], data["labels"][:count]
        if images.shape[1:] == (3, size, size):
            log.info("image source %s is gone; using the %d %s images saved in %s", source, len(images), split, saved)
            return images, labels
    raise DataError(
        f"{run.data_split}: its image source {source} is gone and no {saved.name} holds the images; "
        "restore the source or fix 'source' in the file"
    )


def decode(data: bytes, size: int) -> np.ndarray | None:
    """Decodes one image as compress evaluates it: bicubic short-side resize, centre crop, CHW uint8."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            if scale != 1.0:
                img = img.resize(
                    (max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC
                )
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    height, width = array.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.ascontiguousarray(array[top : top + size, left : left + size].transpose(2, 0, 1))


def label_of(path: str, classes: list[str]) -> int:
    """The class of a stored path: its deepest folder that is a class name."""
    for part in reversed(path.split("/")[:-1]):
        if part in classes:
            return classes.index(part)
    raise DataError(f"data_split.json: '{path}' lies in no class folder of {classes}")


def normalise(images: np.ndarray, card: StudentCard) -> np.ndarray:
    """uint8 N×3×H×W → the float32 input the engines take: (x / 255 − mean) / std."""
    mean = np.asarray(card.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(card.std, np.float32).reshape(1, 3, 1, 1)
    return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def calibration_images(run: RunDir, card: StudentCard, count: int) -> np.ndarray:
    """`count` training images for INT8 calibration, saved to calib.npz, returned normalised."""
    images, labels = read_split(run, "train", count, card.input_size[-1])
    if len(images) == 0:
        raise DataError(f"{run.data_split}: no readable training images to calibrate int8 with")
    save_npz(run.root / SAVED["train"], images=images, labels=labels)
    log.info("calibrating int8 on %d training images", len(images))
    return normalise(images, card)


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_SIMD_FLAGS = frozenset({"avx2", "avx512f"})


@dataclass(frozen=True)
class Int8Scheme:
    """How ONNX Runtime quantises a graph: activation sign and symmetry, 7-bit weights or not.

    Weights are always int8, symmetric and per channel; the format is always Q/DQ.
    """

    name: str
    activations: str  # "uint8" | "int8"
    symmetric_activations: bool
    reduce_range: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


TENSORRT_SCHEME = Int8Scheme("s8s8-symmetric", "int8", True, False,
                             "symmetric signed int8: what TensorRT's explicit quantization takes")


def cpu_scheme(isa: Iterable[str] | None = None) -> Int8Scheme:
    """The INT8 scheme ONNX Runtime runs fast on a CPU with these flags (default: this host's)."""
    flags = set(cpu_isa() if isa is None else isa)
    if flags & VNNI_FLAGS:
        return Int8Scheme("u8s8", "uint8", False, False,
                          f"the CPU has {'/'.join(sorted(flags & VNNI_FLAGS))}: U8S8 dot products")
    if flags & X86_SIMD_FLAGS:
        return Int8Scheme("u8s8-reduced", "uint8", False, True,
                          "x86 without VNNI: U8S8 with 7-bit weights (no int16 saturation)")
    return replace(TENSORRT_SCHEME, why="no x86 SIMD flags (ARM or unknown): symmetric signed int8")


def quantize_onnx(src: Path, dst: Path, calibration: np.ndarray, input_name: str, scheme: Int8Scheme,
                  method: str = "minmax", exclude: Sequence[str] = (), prepare: bool = True) -> None:
    """Static INT8 with explicit Q/DQ nodes in `scheme`, weights symmetric and per channel.

    `method` is the calibrator (minmax, entropy, percentile: onnxruntime's CalibrationMethod),
    `exclude` names nodes of the prepared graph kept in float; `prepare=False` takes `src` as
    already pre-processed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _batch_reader(_calibration_batches(src, calibration, method), input_name)
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    activations = QuantType.QUInt8 if scheme.activations == "uint8" else QuantType.QInt8
    try:
        if prepare:
            quant_pre_process(str(src), str(prepared))
        quantize_static(
            str(prepared if prepare else src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=scheme.reduce_range, activation_type=activations, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True},
        )
    finally:
        prepared.unlink(missing_ok=True)


def _calibration_batches(src: Path, calibration: np.ndarray, method: str) -> list[np.ndarray]:
    """The calibration images in the batches the graph `src` takes for calibrator `method`.

    A static batch axis takes exactly its size (whole chunks only); a dynamic one takes 16, or
    1 for the histogram calibrators, which need equal batches.
    """
    import onnx

    dim = onnx.load_model(str(src), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    step = dim.dim_value or (16 if method == "minmax" else 1)
    usable = len(calibration) if not dim.dim_value else len(calibration) // step * step
    if usable == 0:
        raise DataError(f"int8 calibration needs at least {step} images for a static batch of {step}; pass more --calib")
    return np.split(calibration[:usable], range(step, usable, step))


def _batch_reader(batches: list[np.ndarray], input_name: str):
    """An onnxruntime CalibrationDataReader that feeds `batches` once."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomically writes arrays to an uncompressed .npz."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


class _Opener:
    """Reads stored paths from a folder or a zip (the source of data_split.json)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        try:
            self._zip = zipfile.ZipFile(source) if source.is_file() else None
        except zipfile.BadZipFile:
            raise DataError(f"{source}: the run's image source is not a folder or a readable zip") from None

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name) if self._zip else (self.source / name).read_bytes()
        except (KeyError, OSError):
            raise DataError(f"{self.source}: '{name}' listed in data_split.json is missing") from None

    def __enter__(self) -> "_Opener":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip:
            self._zip.close()
