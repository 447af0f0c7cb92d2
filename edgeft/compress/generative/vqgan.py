"""VQGAN (Esser et al. 2021, taming-transformers) scaled for small images: the priming model of OTA §3.1.

Encoder: conv3×3 → per level `num_res_blocks` ResNet blocks (GroupNorm, swish) and a stride-2
downsample (not after the last level) → mid (res, attn, res) → norm, swish, conv to `z_channels`;
a 1×1 conv to `embed_dim`; the quantiser; a 1×1 conv back; the decoder mirrors the encoder with
`num_res_blocks + 1` blocks per level and nearest-neighbour upsampling. Images are in [−1, 1]
inside the model; `reconstruct` takes and returns [0, 1] images.

The quantiser is taming's "legacy" one (SPEC-methods fact 4): no EMA, codebook initialised
uniform(−1/K, 1/K), loss `mean((sg[z_q] − z)²) + β·mean((z_q − sg[z])²)` with β = 0.25 on the
**codebook** term, straight-through `z_q = z + sg(z_q − z)`. vector-quantize-pytorch was weighed
for it and not used: its losses put the weight on the commitment term and its codebook is EMA by
default, so matching the legacy placement would mean fighting the library for ~25 lines.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

LEGACY_BETA = 0.25  # taming's VectorQuantizer default; weights the codebook term (legacy=True)


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture of a VQGAN (what a pack records to rebuild it)."""

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)  # 32 px → 8×8 codes
    num_res_blocks: int = 1
    z_channels: int = 64
    embed_dim: int = 64
    codebook_size: int = 512
    beta: float = LEGACY_BETA

    @property
    def downsampling(self) -> int:
        """Image pixels per code along one side."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_json(self) -> dict:
        data = asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "VQGANConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "channel_mult" in values:
            values["channel_mult"] = tuple(values["channel_mult"])
        return cls(**values)


def _norm(channels: int) -> nn.GroupNorm:
    """taming's GroupNorm(32); fewer groups when a tiny model has fewer channels."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions (taming's mid block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, hw, c]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(channels: int) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.channels, 3, padding=1)]
        cin = cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(cin, width))
                cin = width
            if level != len(widths) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
        layers += [_mid(cin), _norm(cin), nn.SiLU(), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        cin = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, cin, 3, padding=1), _mid(cin)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(cin, widths[level]))
                cin = widths[level]
            if level != 0:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
        layers += [_norm(cin), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)  # the adaptive GAN weight's reference layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))


class VectorQuantizer(nn.Module):
    """taming's legacy quantiser: nearest codebook entry, straight-through gradient, β on the codebook term."""

    def __init__(self, codebook_size: int, dim: int, beta: float = LEGACY_BETA) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, D, H, W] → (z_q with straight-through gradient, loss, code indices [B, H, W])."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        codes = self.nearest(flat)
        z_q = self.codebook(codes).view(b, h, w, d).permute(0, 3, 1, 2)
        # legacy placement: the commitment term (gradient to the encoder) has weight 1, β weights the codebook term
        loss = F.mse_loss(z_q.detach(), z) + self.beta * F.mse_loss(z_q, z.detach())
        z_q = z + (z_q - z).detach()
        return z_q, loss, codes.view(b, h, w)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the closest codebook vector (squared L2) for each row of `flat`."""
        weight = self.codebook.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.T + weight.pow(2).sum(1)
        return dist.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices [B, H, W] → z_q [B, D, H, W]."""
        return self.codebook(codes).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    """Encoder, codebook and decoder; `forward` maps [−1, 1] images to (reconstruction, codebook loss, codes)."""

    def __init__(self, cfg: VQGANConfig = VQGANConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.beta)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantizer(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.lookup(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, loss, codes = self.encode(x)
        return self.decode(z_q), loss, codes

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Re-represents [0, 1] images (OTA stage 2): Dec(Quant(Enc(x))), any size (padded to the code grid)."""
        f = self.cfg.downsampling
        h, w = images.shape[-2:]
        pad = (0, (-w) % f, 0, (-h) % f)
        x = F.pad(images * 2 - 1, pad, mode="reflect") if any(pad) else images * 2 - 1
        rec = self(x)[0][..., :h, :w]
        return ((rec + 1) / 2).clamp(0, 1)


@torch.no_grad()
def rerepresent_images(vqgan: VQGAN, images: list[torch.Tensor], device: torch.device | str = "cpu",
                       batch_size: int = 64, work_size: int | None = None) -> list[torch.Tensor]:
    """uint8 [3, H, W] images → their uint8 re-representations, in order (same-sized images run together).

    With `work_size` (the pack's training resolution) each image is re-represented at that short side, as
    the VQGAN learnt its codes, and resized back to its own size: a 32-px pack re-represents the content of
    a 128-px teacher input at 32 px instead of coding 4× up-sampled pixels it never saw.
    """
    vqgan = vqgan.to(device).eval()
    out: list[torch.Tensor | None] = [None] * len(images)
    for shape in dict.fromkeys(t.shape for t in images):
        rows = [i for i, t in enumerate(images) if t.shape == shape]
        size = shape[-2:]
        if work_size and min(size) != work_size:
            scale = work_size / min(size)
            work = (max(work_size, round(size[0] * scale)), max(work_size, round(size[1] * scale)))
        else:
            work = None
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = torch.stack([images[i] for i in chunk]).to(device).float() / 255
            if work:
                batch = F.interpolate(batch, size=work, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            rec = vqgan.reconstruct(batch)
            if work:
                rec = F.interpolate(rec, size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)
            for i, image in zip(chunk, (rec * 255).round().to(torch.uint8).cpu()):
                out[i] = image
    return out


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (taming's NLayerDiscriminator, BatchNorm), one logit per patch."""

    def __init__(self, channels: int = 64, layers: int = 2) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        seq.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float = 0.8) -> torch.Tensor:
    """λ = clamp(‖∇_W rec‖ / (‖∇_W g‖ + 1e-4), 0, 1e4)·scale, W the decoder's last conv (taming)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images [B, C, H, W]."""
    mse = (reference - estimate).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)
