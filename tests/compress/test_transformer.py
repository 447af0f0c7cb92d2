"""The latent transformer: causality, the KV cache, minGPT's optimiser groups, the top-k draw, masked completion."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeft.compress.generative.transformer import LatentTransformer, TransformerConfig, complete, draw, optimizer

TINY = TransformerConfig(vocab_size=12, block_size=9, layers=2, heads=2, width=16)


def model() -> LatentTransformer:
    torch.manual_seed(0)
    return LatentTransformer(TINY).eval()


def codes(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, TINY.block_size), generator=torch.Generator().manual_seed(seed))


def test_changing_a_later_token_leaves_earlier_logits_unchanged():
    net = model()
    tokens = net.inputs(codes())
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % TINY.vocab_size
    before, after = net(tokens), net(changed)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_the_kv_cache_gives_the_full_pass_logits():
    net, tokens = model(), model().inputs(codes())
    full = net(tokens)
    cache = net.new_cache()
    steps = [net(tokens[:, :4], cache)] + [net(tokens[:, t:t + 1], cache) for t in range(4, TINY.block_size)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_init_and_optimizer_follow_mingpt():
    net = model()
    assert abs(net.head.weight.std().item() - 0.02) < 0.005 and not net.blocks[0].attn.qkv.bias.any()
    opt = optimizer(net, 3e-4)
    decayed, plain = opt.param_groups
    linear = {id(m.weight) for m in net.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in decayed["params"]} == linear and decayed["weight_decay"] == 0.01
    assert plain["weight_decay"] == 0.0 and id(net.tok.weight) in {id(p) for p in plain["params"]}
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert net.sos == TINY.vocab_size and net.tok.num_embeddings == TINY.vocab_size + 1


def test_draw_is_a_multinomial_over_the_top_k():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]]).expand(2000, 4)
    uniform = (torch.arange(2000) + 0.5) / 2000  # a uniform grid: counts approach the probabilities
    counts = torch.bincount(draw(logits, uniform, top_k=4), minlength=4) / 2000
    assert torch.allclose(counts, logits[0].softmax(0), atol=2e-3)
    top2 = torch.bincount(draw(logits, uniform, top_k=2), minlength=4) / 2000
    assert top2[1] == top2[3] == 0 and torch.allclose(top2[[0, 2]], torch.tensor([2.0, 1.0]).softmax(0), atol=2e-3)
    hot = torch.bincount(draw(logits, uniform, temperature=0.01), minlength=4)
    assert hot[0] == 2000


def test_completion_keeps_every_unmasked_code_and_samples_the_masked_ones():
    net, source = model(), codes(4)
    mask = torch.zeros_like(source, dtype=torch.bool)
    mask[0, 2:5] = mask[1, 7] = mask[2, ::2] = True  # row 3 keeps everything
    uniform = torch.rand(source.shape, generator=torch.Generator().manual_seed(2))
    out = complete(net, source, mask, uniform)
    assert torch.equal(out[~mask], source[~mask])
    assert out[mask].lt(TINY.vocab_size).all() and not torch.equal(out[mask], source[mask])
    assert torch.equal(complete(net, source, mask, uniform), out)  # deterministic given the uniforms
    alone = complete(net, source[:1], mask[:1], uniform[:1])
    assert torch.equal(alone, out[:1])  # a sample does not depend on its batch
    assert torch.equal(complete(net, source, torch.zeros_like(mask), uniform), source)


def test_completion_is_conditioned_on_the_kept_codes():
    """Teacher forcing: each masked code is drawn from p(c_t | the codes before it, kept or sampled)."""
    net, source = model(), codes(1)
    mask = torch.zeros_like(source, dtype=torch.bool)
    mask[0, 6] = True
    uniform = torch.full(source.shape, 0.999)
    expected = draw(net(net.inputs(source))[:, 6], uniform[:, 6])
    assert complete(net, source, mask, uniform)[0, 6] == expected[0]


@pytest.mark.parametrize("field", ["layers", "heads", "width"])
def test_config_round_trips(field):
    cfg = TransformerConfig(**{field: 8})
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
