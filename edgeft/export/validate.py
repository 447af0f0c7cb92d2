"""Validation of an engine against PyTorch on held-out images (DESIGN.md §House style 6).

`ref.npz` holds the held-out images (uint8, N×3×H×W, before normalisation), their labels
and the PyTorch logits; every engine is run on the same images and compared: largest
absolute logit difference, mean cosine similarity of the logit vectors, top-1 agreement,
and the engine's own accuracy next to PyTorch's. Tolerances are per precision, like
Optimum's ATOL_FOR_VALIDATION, but judged on decisions too, since INT8 moves every logit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgeft.artifacts import RunDir, StudentCard
from edgeft.errors import DataError
from edgeft.export.quantize import SAVED, normalise, read_split, save_npz

log = logging.getLogger(__name__)

MIN_IMAGES = 256  # fewer held-out images than this give noisy agreement figures
BATCH = 32

# A runner maps a batch of normalised NCHW float32 images to float32 logits.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """How far an engine may stray from PyTorch and still be kept.

    `atol` bounds the largest absolute logit difference relative to the largest reference
    logit (at least 1), so it means the same at any logit scale; None skips it (INT8, where
    every logit moves by design and only the decisions matter).
    """

    atol: float | None
    min_cosine: float
    min_top1: float
    max_accuracy_drop: float


# INT8 flips near-tie decisions of weakly trained students (a 50 %-accurate demo student keeps
# ~95 % top-1 agreement at a 1-point accuracy drop), so its binding check is the accuracy drop.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-3, min_cosine=0.9999, min_top1=0.995, max_accuracy_drop=0.005),
    "fp16": Tolerance(atol=3e-2, min_cosine=0.999, min_top1=0.98, max_accuracy_drop=0.01),
    "int8": Tolerance(atol=None, min_cosine=0.98, min_top1=0.90, max_accuracy_drop=0.02),
}


@dataclass(frozen=True)
class Reference:
    """Held-out images, labels and PyTorch's logits for them."""

    images: np.ndarray
    labels: np.ndarray
    logits: np.ndarray


@dataclass(frozen=True)
class Figures:
    """How an engine compares with PyTorch on the reference images."""

    images: int
    max_abs_diff: float
    cosine: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float
    scale: float  # the largest reference logit magnitude (at least 1)

    def failures(self, tol: Tolerance) -> list[str]:
        """Each tolerance the figures break, as a short phrase (empty: passed)."""
        out = []
        if tol.atol is not None and self.max_abs_diff > tol.atol * self.scale:
            out.append(f"max |Δlogit| {self.max_abs_diff:.2e} > {tol.atol * self.scale:.2e}")
        if self.cosine < tol.min_cosine:
            out.append(f"cosine {self.cosine:.5f} < {tol.min_cosine}")
        if self.top1_agreement < tol.min_top1:
            out.append(f"top-1 agreement {self.top1_agreement:.2%} < {tol.min_top1:.1%}")
        drop = self.reference_accuracy - self.accuracy
        if drop > tol.max_accuracy_drop:
            out.append(f"accuracy {self.accuracy:.2%} is {drop * 100:.1f} points below PyTorch's "
                       f"{self.reference_accuracy:.2%} (limit {tol.max_accuracy_drop * 100:.1f})")
        return out


def build_reference(run: RunDir, card: StudentCard, model: nn.Module, count: int) -> Reference:
    """Reads up to `count` held-out images, runs PyTorch on them and saves ref.npz."""
    images, labels = read_split(run, "val", count, card.input_size[-1])
    if len(images) == 0:
        raise DataError(f"{run.data_split}: no readable held-out (val) images to validate exports with")
    if len(images) < MIN_IMAGES:
        log.warning("validating on %d held-out images only (fewer than %d); agreement figures are coarse",
                    len(images), MIN_IMAGES)
    model = model.eval()

    def pytorch(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).float().numpy()

    logits = run_batches(pytorch, normalise(images, card))
    reference = Reference(images, labels, logits)
    save_npz(run.root / SAVED["val"], images=images, labels=labels, logits=logits,
             mean=np.asarray(card.mean, np.float32), std=np.asarray(card.std, np.float32))
    return reference


def compare(runner: Runner, reference: Reference, card: StudentCard) -> Figures:
    """Runs `runner` on the reference images and measures it against PyTorch's logits."""
    out = run_batches(runner, normalise(reference.images, card))
    ref = reference.logits
    if out.shape != ref.shape:
        raise DataError(f"the engine returns logits of shape {out.shape[1:]}, PyTorch {ref.shape[1:]}")
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    dots = np.sum(out64 * ref64, axis=1)
    norms = np.linalg.norm(out64, axis=1) * np.linalg.norm(ref64, axis=1)
    cosine = np.where(norms > 0, dots / np.maximum(norms, 1e-30), 1.0)
    top_out, top_ref = out.argmax(1), ref.argmax(1)
    return Figures(
        images=len(ref),
        max_abs_diff=float(np.abs(out64 - ref64).max()),
        cosine=float(cosine.mean()),
        top1_agreement=float(np.mean(top_out == top_ref)),
        accuracy=float(np.mean(top_out == reference.labels)),
        reference_accuracy=float(np.mean(top_ref == reference.labels)),
        scale=float(max(1.0, np.abs(ref64).max())),
    )


def fit_batch(runner: Runner, size: int | None) -> Runner:
    """`runner` for an engine with a static batch of `size`: any batch is fed `size` images at a
    time, the last chunk padded with zeros whose outputs are dropped (None: dynamic, unchanged)."""
    if size is None:
        return runner

    def run(batch: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(batch), size):
            chunk = batch[i : i + size]
            count = len(chunk)
            if count < size:
                chunk = np.concatenate([chunk, np.zeros((size - count, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(runner(chunk))[:count])
        return np.concatenate(outs)

    return run


def run_batches(runner: Runner, inputs: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Runs `runner` over `inputs` in batches and stacks the float32 results."""
    outs = [np.asarray(runner(inputs[i : i + batch]), dtype=np.float32) for i in range(0, len(inputs), batch)]
    return np.concatenate(outs)

