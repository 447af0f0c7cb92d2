"""Fréchet distance between two sets of features (OTA Fig. 4's dataset-similarity check).

`FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁^½ Σ₂ Σ₁^½)^½` (Dowson & Landau 1982; the FID formula
of Heusel et al. 2017 on any feature extractor, as in Deng & Zheng 2021 that OTA follows).
The trace of the matrix root is taken from the eigenvalues of the symmetric PSD product
`Σ₁^½ Σ₂ Σ₁^½`, which equal those of `Σ₁Σ₂`: no complex round-off as with a general `sqrtm`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeft.compress.data import make_loader


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of [N, D] features."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def frechet_between(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset: Dataset, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> torch.Tensor:
    """`model.features(images)` (pooled pre-logits of a `Normalized` model) over a dataset, in order."""
    model.eval()
    return torch.cat([model.features(images.to(device)).float().cpu() for images, _ in make_loader(dataset, batch_size)])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
