"""Latent transformer over VQGAN codes (minGPT as used by taming): OTA §3.2's next-index prediction model.

Pre-LN blocks of causal self-attention and a GELU MLP (×4), learned positions, N(0, 0.02) init.
The sequence is `[sos] + codes in raster order`; position t predicts code t from `sos, c_0 … c_{t−1}`,
so `block_size` = the number of codes. `sos` is one extra token id (= the codebook size).

`complete` is DIGG's arbitrary-mask completion (SPEC-methods fact 5): every kept code is
teacher-forced, only the masked positions are sampled, in raster order, with a KV cache. The draw is
logits/T → top-k → softmax → one multinomial draw, taken by inverse CDF on a uniform that the caller
gives per sample and position: a sample then does not depend on the batch or the shard it falls in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

KVCache = list  # one [keys, values] pair per layer, grown by each forward


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a latent transformer (what a pack records to rebuild it)."""

    vocab_size: int = 512  # the VQGAN codebook size; token `vocab_size` is [sos]
    block_size: int = 64  # codes per image (8×8 for 32 px)
    layers: int = 4
    heads: int = 4
    width: int = 192

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TransformerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (s.view(b, t, self.heads, c // self.heads).transpose(1, 2) for s in self.qkv(x).split(c, 2))
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        # query i sits at absolute position (past + i) and sees keys 0 … past + i
        mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class LatentTransformer(nn.Module):
    """minGPT over `[sos] + codes`; `forward(tokens)` → next-code logits [B, T, vocab_size]."""

    def __init__(self, cfg: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size + 1, cfg.width)  # + [sos]
        self.pos = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.apply(_init)

    @property
    def sos(self) -> int:
        return self.cfg.vocab_size

    def forward(self, tokens: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        """tokens [B, T] (continuing the `cache` when given: positions start after its length)."""
        past = cache[0][0].shape[2] if cache and cache[0] else 0
        x = self.tok(tokens) + self.pos[:, past:past + tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.ln_f(x))

    def inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, L] → the teacher-forcing input `[sos] + codes[:, :-1]`."""
        sos = torch.full_like(codes[:, :1], self.sos)
        return torch.cat([sos, codes[:, :-1]], 1)

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean next-code cross-entropy (nats per code) of codes [B, L]."""
        logits = self(self.inputs(codes))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))

    def new_cache(self) -> list[KVCache]:
        return [[] for _ in self.blocks]


def _init(module: nn.Module) -> None:
    """minGPT: N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, LatentTransformer):
        nn.init.normal_(module.pos, 0.0, 0.02)


def optimizer(model: LatentTransformer, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """minGPT's AdamW: betas (0.9, 0.95), weight decay on Linear weights only (not biases, norms, embeddings)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def draw(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0, top_k: int = 100) -> torch.Tensor:
    """One code per row of logits [B, V]: logits/T → top-k → softmax → multinomial (inverse CDF of `uniform` [B])."""
    values, index = (logits.float() / temperature).topk(min(top_k, logits.shape[-1]), dim=-1)
    cdf = values.softmax(-1).cumsum(-1)
    pick = torch.searchsorted(cdf, (uniform.to(cdf) * cdf[:, -1]).unsqueeze(1)).clamp_max(cdf.shape[1] - 1)
    return index.gather(1, pick).squeeze(1)


@torch.no_grad()
def complete(model: LatentTransformer, codes: torch.Tensor, mask: torch.Tensor, uniform: torch.Tensor,
             temperature: float = 1.0, top_k: int = 100) -> torch.Tensor:
    """Fills the masked codes (OTA §3.2): codes, mask (True = resample) and uniform all [B, L], raster order.

    Every unmasked code is kept exactly and fed as context; the prefix before the first masked position
    runs in one pass, then one position at a time through the KV cache.
    """
    model.eval()
    out = codes.clone()
    columns = mask.any(0).nonzero().flatten().tolist()
    if not columns:
        return out
    first, last = columns[0], columns[-1]
    cache = model.new_cache()
    logits = model(model.inputs(out)[:, :first + 1], cache)[:, -1]
    for t in range(first, last + 1):
        if t > first:
            logits = model(out[:, t - 1:t], cache)[:, -1]
        if mask[:, t].any():
            out[:, t] = torch.where(mask[:, t], draw(logits, uniform[:, t], temperature, top_k), out[:, t])
    return out
