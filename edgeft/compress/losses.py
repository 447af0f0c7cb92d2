"""Transfer losses in plain PyTorch: the reference that the fused kernels in `compress.kernels` match.

- `kernel_distance` / `rbf_kernel_distance`: AFT's mini-batch kernel distance (Han et al. 2024, §3.2, Alg. 1).
- `power_temperature_scale`: KDEP's PTS transform (He et al. 2022, §3.3, Eq. 2).
- `svd_align`: KDEP's non-parametric dimension alignment (He et al. 2022, §3.2).
- `hinton_kd`: logit distillation (Hinton et al. 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS_NORM = 1e-8  # added to row norms before dividing (AFT's official code)
EPS_SQRT = 1e-8  # added under the square root so the gradient stays finite at ΔK = 0


def _centre_and_normalise(x: torch.Tensor) -> torch.Tensor:
    """Subtracts the batch mean of each feature, then scales every row to unit length."""
    x = x - x.mean(0, keepdim=True)
    return x / (x.norm(dim=1, keepdim=True) + EPS_NORM)


def _rms(delta: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(delta.pow(2).mean() + EPS_SQRT)


def kernel_distance(phi: torch.Tensor, psi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AFT's regulariser: `sqrt(mean((K_φ − K_ψ)²) + 1e-8)` over the B×B linear batch kernels.

    Args:
        phi: [B, dφ] student features (no projection).
        psi: [B, dψ] raw teacher features.
        weights: [dψ] feature weights `sigmoid(s)`; they scale `psi` before centring and normalising,
            so a uniform vector has no effect (only relative weights matter).

    Returns:
        A scalar, `‖ΔK‖_F / B` up to the epsilon; 0 when the student features are a rotation of the
        weighted teacher features.
    """
    a = _centre_and_normalise(phi)
    b = _centre_and_normalise(psi * weights)
    return _rms(a @ a.T - b @ b.T)


def rbf_kernel_distance(phi: torch.Tensor, psi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`kernel_distance` with RBF kernels `exp(−‖x_i − x_j‖²)` on the centred, row-normalised features.

    The AFT paper's kernel ablation (§5.3, Fig. 7b); same arguments as `kernel_distance`.
    """
    return _rms(_rbf(_centre_and_normalise(phi)) - _rbf(_centre_and_normalise(psi * weights)))


def _rbf(x: torch.Tensor) -> torch.Tensor:
    squared = x.pow(2).sum(1)
    distances = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp_min(0)
    return torch.exp(-distances)


def power_temperature_scale(f: torch.Tensor, T: float = 0.1, n: int = 3) -> torch.Tensor:  # noqa: N803 (paper's name)
    """KDEP's PTS: `sign(f)·|f/T|^(1/n)` — odd, monotone, shrinks the spread of channel variances."""
    if T <= 0 or n <= 0:
        raise ValueError(f"power_temperature_scale: T and n must be positive (got T={T}, n={n})")
    return torch.sign(f) * (f.abs() / T).pow(1.0 / n)


def svd_align(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and top-`dim` right singular vectors of the centred `features` (KDEP's offline alignment).

    Computed through the eigendecomposition of the Dt×Dt scatter matrix in float64, which gives the
    same vectors as the SVD of the N×Dt matrix and also works when N < dim. Each column's sign is
    fixed (largest-magnitude entry positive) so that the result is reproducible.

    Args:
        features: [N, Dt] teacher features.
        dim: number of directions kept (the student's feature size), at most Dt.

    Returns:
        mean [Dt] and basis [Dt, dim] with orthonormal columns ordered by singular value.
    """
    n, width = features.shape
    if not 0 < dim <= width:
        raise ValueError(f"svd_align: dim must be in [1, {width}] for {width}-dim features (got {dim})")
    if n < 2:
        raise ValueError(f"svd_align: needs at least 2 feature rows (got {n})")
    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = vectors.flip(-1)[:, :dim]
    pivot = basis.abs().argmax(0)
    basis = basis * torch.sign(basis[pivot, torch.arange(dim)])
    return mean.to(features.dtype), basis.to(features.dtype)


def hinton_kd(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
    temperature: float = 4.0, alpha: float = 0.5,
) -> torch.Tensor:
    """`alpha·CE(logits, labels) + (1 − alpha)·T²·KL(teacher ‖ student)` at temperature T (Hinton et al. 2015)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                    reduction="batchmean")
    return alpha * F.cross_entropy(logits, labels) + (1 - alpha) * t * t * soft
