"""VQGAN pieces: the legacy quantiser (straight-through, β on the codebook term), shapes, GAN loss helpers, PSNR."""
from __future__ import annotations

import pytest
import torch

from edgeft.compress.generative.vqgan import (VQGAN, PatchDiscriminator, VectorQuantizer, VQGANConfig, adaptive_weight,
                                              hinge_d_loss, psnr, rerepresent_images)

TINY = VQGANConfig(channels=8, z_channels=8, embed_dim=4, codebook_size=16)


def test_codebook_starts_uniform_in_plus_minus_one_over_k():
    q = VectorQuantizer(64, 4)
    assert q.codebook.weight.abs().max() <= 1 / 64
    assert q.codebook.weight.std() > 0


def test_quantiser_picks_the_nearest_code_and_passes_the_gradient_straight_through():
    q = VectorQuantizer(3, 2)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]]))
    z = torch.tensor([[0.9, 1.2], [-0.8, 1.7]]).T.reshape(1, 2, 1, 2).clone().requires_grad_(True)  # codes 1 and 2
    z_q, _, codes = q(z)
    assert codes.flatten().tolist() == [1, 2]
    assert torch.allclose(z_q.detach(), torch.tensor([[1.0, -1.0], [1.0, 2.0]]).reshape(1, 2, 1, 2))
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # identity gradient to the encoder
    assert q.codebook.weight.grad is None or not q.codebook.weight.grad.any()  # no gradient through the lookup


def test_legacy_beta_weights_the_codebook_term_not_the_commitment_term():
    q = VectorQuantizer(2, 2, beta=0.25)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    z = torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1).requires_grad_(True)
    _, loss, codes = q(z)
    assert codes.item() == 0
    assert loss.item() == pytest.approx(1.25 * (1 + 4) / 2)  # (1 + β)·mean((e − z)²)
    loss.backward()
    e = torch.zeros(2)
    n = 2  # elements averaged by the MSE
    assert torch.allclose(z.grad.flatten(), 2 * (z.detach().flatten() - e) / n)  # commitment: weight 1
    assert torch.allclose(q.codebook.weight.grad[0], 0.25 * 2 * (e - z.detach().flatten()) / n)  # codebook: β
    assert not q.codebook.weight.grad[1].any()


def test_vqgan_shapes_and_reconstruct_of_any_size():
    model = VQGAN(TINY).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, loss, codes = model(x)
    assert rec.shape == x.shape and loss.ndim == 0
    assert codes.shape == (2, 4, 4) and codes.max() < TINY.codebook_size
    assert torch.equal(model.decode_codes(codes), model.decode(model.quantizer.lookup(codes)))
    odd = model.reconstruct(torch.rand(1, 3, 18, 13))
    assert odd.shape == (1, 3, 18, 13) and 0 <= odd.min() and odd.max() <= 1
    assert TINY.downsampling == 4
    assert VQGANConfig.from_json(TINY.to_json()) == TINY


def test_patch_discriminator_gives_one_logit_per_patch():
    logits = PatchDiscriminator(channels=8)(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 1, 6, 6)


def test_hinge_loss_and_adaptive_weight():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec_loss, g_loss = (3 * w).sum(), (w ** 2).sum()  # gradients (3, 3) and (2, 4)
    expected = torch.tensor(18.0).sqrt() / (torch.tensor(20.0).sqrt() + 1e-4) * 0.8
    assert adaptive_weight(rec_loss, g_loss, w).item() == pytest.approx(expected.item(), rel=1e-5)
    assert adaptive_weight(rec_loss, 0 * g_loss, w).item() == pytest.approx(1e4 * 0.8)  # clamped


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 3, 4, 4)
    assert psnr(a, a + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


class _ShapeRecorder(torch.nn.Module):
    """Stands in for a VQGAN: reconstructs a batch as itself and records the size it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def reconstruct(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(batch.shape[-2:]))
        return batch


def test_rerepresent_images_works_at_the_packs_resolution_and_returns_each_images_size():
    torch.manual_seed(0)
    wide = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    square = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    recorder = _ShapeRecorder()
    out = rerepresent_images(recorder, [wide, square, wide], work_size=32)
    assert sorted(recorder.seen) == [(32, 32), (32, 40)]  # one batch per size, each at short side 32
    assert [t.shape for t in out] == [wide.shape, square.shape, wide.shape] and out[0].dtype == torch.uint8
    assert torch.equal(out[1], square)  # already at the pack's resolution: untouched
    assert not torch.equal(out[0], wide)  # down and up again: detail above 32 px is gone
    recorder.seen.clear()
    assert torch.equal(rerepresent_images(recorder, [wide])[0], wide) and recorder.seen == [(128, 160)]
