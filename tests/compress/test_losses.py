"""Properties of the reference transfer losses (AFT kernel distance, KDEP PTS and SVD alignment)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeft.compress.losses import (
    hinton_kd, kernel_distance, power_temperature_scale, rbf_kernel_distance, svd_align,
)

DISTANCES = [kernel_distance, rbf_kernel_distance]


def _batch(b: int = 16, d_phi: int = 24, d_psi: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    phi = torch.randn(b, d_phi, generator=gen, dtype=torch.float64)
    psi = torch.randn(b, d_psi, generator=gen, dtype=torch.float64) * 3 + 1
    weights = torch.rand(d_psi, generator=gen, dtype=torch.float64) + 0.05
    return phi, psi, weights


def _looped_distance(phi: torch.Tensor, psi: torch.Tensor, weights: torch.Tensor) -> float:
    """AFT's distance written entry by entry: cosine similarities of the batch-centred rows."""
    def kernel(x):
        x = x - x.mean(0)
        return [[float(x[i] @ x[j] / (x[i].norm() * x[j].norm())) for j in range(len(x))] for i in range(len(x))]

    ks, kt = kernel(phi), kernel(psi * weights)
    b = len(phi)
    return (sum((ks[i][j] - kt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2) ** 0.5


def test_kernel_distance_matches_an_entrywise_computation():
    phi, psi, weights = _batch(b=6)
    assert kernel_distance(phi, psi, weights).item() == pytest.approx(_looped_distance(phi, psi, weights), abs=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
def test_distance_vanishes_when_student_features_are_the_weighted_teacher_features(distance):
    _, psi, weights = _batch()
    assert distance(psi * weights, psi, weights).item() < 1e-3  # sqrt(1e-8) = 1e-4 is the floor
    phi, _, _ = _batch(seed=1)
    assert distance(phi, psi, weights).item() > 0.05


@pytest.mark.parametrize("distance", DISTANCES)
def test_distance_is_invariant_to_an_orthogonal_rotation_of_phi(distance):
    phi, psi, weights = _batch()
    rotation, _ = torch.linalg.qr(torch.randn(phi.shape[1], phi.shape[1], dtype=torch.float64))
    assert distance(phi @ rotation, psi, weights).item() == pytest.approx(distance(phi, psi, weights).item(), rel=1e-9)


@pytest.mark.parametrize("distance", DISTANCES)
def test_distance_is_invariant_to_a_joint_permutation_of_the_batch(distance):
    phi, psi, weights = _batch()
    order = torch.randperm(len(phi))
    assert distance(phi[order], psi[order], weights).item() == pytest.approx(
        distance(phi, psi, weights).item(), rel=1e-9)


def test_uniform_weights_cancel_and_relative_weights_matter():
    phi, psi, weights = _batch()
    ones = torch.ones_like(weights)
    assert kernel_distance(phi, psi, 0.5 * ones).item() == pytest.approx(kernel_distance(phi, psi, ones).item(), rel=1e-9)
    assert kernel_distance(phi, psi, weights).item() != pytest.approx(kernel_distance(phi, psi, ones).item(), rel=1e-3)


@pytest.mark.parametrize("distance", DISTANCES)
def test_distance_has_gradients_in_phi_and_the_weight_logits(distance):
    phi, psi, _ = _batch()
    phi = phi.float().requires_grad_()
    s = torch.zeros(psi.shape[1], requires_grad=True)
    distance(phi, psi.float(), torch.sigmoid(s)).backward()
    for grad in (phi.grad, s.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_pts_is_odd_monotone_and_scales_by_temperature_and_power():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    y = power_temperature_scale(x)
    assert torch.allclose(power_temperature_scale(-x), -y)
    assert (y[1:] >= y[:-1]).all() and (y[1:] > y[:-1]).all()
    assert power_temperature_scale(torch.tensor([0.8])).item() == pytest.approx(2.0)  # (0.8/0.1)^(1/3)
    assert power_temperature_scale(torch.tensor([-2.0]), T=0.5, n=2).item() == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        power_temperature_scale(x, T=0)


def test_pts_shrinks_the_spread_of_channel_stds():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen) * torch.tensor([10.0, 1.0, 0.1, 0.01])
    before, after = x.std(0), power_temperature_scale(x).std(0)
    assert after.max() / after.min() < (before.max() / before.min()) / 10


def test_svd_align_keeps_the_top_variance_with_an_orthonormal_basis():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen, dtype=torch.float64) @ torch.diag(torch.logspace(1, -1, 16, dtype=torch.float64))
    x = x @ torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0] + 5
    mean, basis = svd_align(x, 4)
    assert basis.shape == (16, 4) and torch.allclose(mean, x.mean(0))
    assert torch.allclose(basis.T @ basis, torch.eye(4, dtype=torch.float64), atol=1e-10)
    singular = torch.linalg.svdvals(x - x.mean(0))
    kept = ((x - mean) @ basis).var(0)
    assert torch.allclose(kept, singular[:4] ** 2 / (len(x) - 1), rtol=1e-8)  # ordered, top-4 variance
    other = torch.linalg.qr(torch.randn(16, 4, generator=gen, dtype=torch.float64))[0]
    assert ((x - mean) @ other).var(0).sum() < kept.sum()


def test_svd_align_works_with_fewer_rows_than_directions_and_checks_dim():
    x = torch.randn(5, 16)
    mean, basis = svd_align(x, 8)
    assert basis.shape == (16, 8) and torch.allclose(basis.T @ basis, torch.eye(8), atol=1e-5)
    assert svd_align(x, 8)[1].equal(basis)  # signs are fixed: reproducible
    with pytest.raises(ValueError):
        svd_align(x, 17)


def test_hinton_kd_is_cross_entropy_when_the_teacher_agrees():
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    assert hinton_kd(logits, logits, labels, 4.0, 0.5).item() == pytest.approx(0.5 * F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert hinton_kd(logits, -logits, labels).item() > hinton_kd(logits, logits, labels).item()
