"""`edgeft prime`: train the VQGAN on upstream images once and write a portable pack (OTA §3.1 stage 1).

The GAN alternates two optimisers (generator, then discriminator) on every step, so its step is its
own, but the loop around it is `Trainer.run_stage`'s (`edgeft.compress.resumable.Loop`): atomic
checkpoints with every RNG state (every `checkpoint_every` steps, since an epoch of 25k images is long
on a CPU), `--resume`, metrics rows in metrics.jsonl and the `Progress` sink. Losses follow taming:
L1 + codebook loss, plus the hinge PatchGAN with the adaptive weight from `disc_start` on. The perceptual (LPIPS) term needs VGG
weights that cannot be loaded offline, so it is off and the pack records the deviation.

With `transformer_steps` > 0 the latent transformer of DIGG (OTA §3.2) is trained next, on the codes
that the pack's own (frozen) VQGAN gives the upstream train images and their mirror images (computed
once into <work>/transformer/), and written into the same pack. Its resumable step loop (the same `Loop`)
keeps <work>/transformer/ (checkpoints, held-out NLL rows in metrics.jsonl): minGPT's AdamW and a constant
lr after a linear warm-up, as taming trains it. So `--resume --transformer-steps N` adds a transformer
to a finished VQGAN-only pack without touching the VQGAN, and a larger N later trains it further.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from edgeft import artifacts
from edgeft.compress import data as data_mod
from edgeft.compress.generative.pack import MANIFEST, add_transformer, gan_phase_ran, load_pack, write_pack
from edgeft.compress.generative.transformer import LatentTransformer, TransformerConfig, optimizer
from edgeft.compress.generative.vqgan import (VQGAN, PatchDiscriminator, VQGANConfig, adaptive_weight, hinge_d_loss,
                                              psnr)
from edgeft.compress.resumable import Checkpoint, Loop, NullProgress, Progress, append_metrics
from edgeft.compress.train import resolve_device
from edgeft.config import PrimeConfig, build_config
from edgeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HOLDOUT_SEED = 0  # the held-out images stay the same across --seed values
GRID_IMAGES = 16
DEFAULT_EPOCHS = 20
DISC_WEIGHT = 0.8  # taming's discriminator_weight: scales the adaptive GAN weight
DEVIATIONS = [
    "no perceptual (LPIPS) loss: its VGG weights cannot be loaded offline (λ_p = 0); reconstructions are "
    "L1 + codebook (+ the PatchGAN when it runs) only",
    "architecture scaled for small images (taming's is for 256 px): see `architecture`",
]
RESUME_FREE = {"resume", "device", "checkpoint_every", "eval_every"}
TRANSFORMER_OPTIONS = {f.name for f in dataclasses.fields(PrimeConfig) if f.name.startswith("transformer_")}
WARMUP_FRACTION, MAX_WARMUP = 0.05, 200  # transformer lr warm-up: 5% of its steps, at most 200


def prime(cfg: PrimeConfig, explicit: dict | None = None, progress: Progress | None = None) -> dict:
    """Trains (or resumes) the VQGAN of `cfg` and writes the pack, then its latent transformer when
    `cfg.transformer_steps` > 0; returns pack.json's content."""
    out, work = Path(cfg.out), Path(cfg.work or f"{cfg.out}-work")
    cfg = _prepare(cfg, explicit or {}, out, work)
    progress = progress or NullProgress()
    if not ((out / MANIFEST).exists() and (work / "done.json").exists()):
        _prime_vqgan(cfg, out, work, progress)
    if cfg.transformer_steps:
        return _prime_transformer(cfg, out, work, progress)
    return artifacts.read_json(out / MANIFEST)


def _prime_vqgan(cfg: PrimeConfig, out: Path, work: Path, progress: Progress) -> dict:
    """The VQGAN's GAN loop (resumable) and the VQGAN-only pack."""
    device = resolve_device(cfg.device)
    train, heldout, classes = _load_data(cfg, work)
    total = cfg.steps or (cfg.epochs or DEFAULT_EPOCHS) * max(1, len(train) // cfg.batch_size)
    gan = _GAN.build(cfg, device)
    loop = Loop("prime", total, Checkpoint(work / "state.pt", gan.parts(), cfg.resume, out), progress,
                unit_name="step", save_every=cfg.checkpoint_every)
    run = _VQGANRun(cfg, work, device, train, heldout, gan, loop)
    loop.run(run.step)
    return run.write_pack(out, classes)


@dataclass
class _GAN:
    """The VQGAN, its PatchGAN discriminator and their Adam optimisers (betas (0.5, 0.9), as taming)."""

    vqgan: VQGAN
    disc: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @classmethod
    def build(cls, cfg: PrimeConfig, device: torch.device) -> "_GAN":
        """Freshly initialised from `cfg.seed`, on `device`."""
        torch.manual_seed(cfg.seed)
        vqgan = VQGAN(VQGANConfig(channels=cfg.channels, codebook_size=cfg.codebook_size)).to(device)
        disc = PatchDiscriminator().to(device)
        opt_g = torch.optim.Adam(vqgan.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        return cls(vqgan, disc, opt_g, opt_d)

    def parts(self) -> dict[str, object]:
        """What the checkpoint keeps."""
        return {"vqgan": self.vqgan, "disc": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def train_step(self, x: torch.Tensor, use_gan: bool) -> dict:
        """One generator update (L1 + codebook [+ λ·hinge G loss]) and, with the GAN on, one discriminator update."""
        self.vqgan.train()
        rec, codebook_loss, _ = self.vqgan(x)
        rec_loss = (x - rec).abs().mean()
        loss = rec_loss + codebook_loss
        figures = {"l1": rec_loss.item(), "codebook": codebook_loss.item()}
        if use_gan:
            g_loss = -self.disc(rec).mean()
            weight = adaptive_weight(rec_loss, g_loss, self.vqgan.last_layer, DISC_WEIGHT)
            loss = loss + weight * g_loss
            figures["g_weight"] = weight.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if use_gan:
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            figures["d_loss"] = d_loss.item()
        return figures


@dataclass
class _VQGANRun:
    """The VQGAN phase: its data, GAN and step loop; held-out PSNR rows in <work>/metrics.jsonl."""

    cfg: PrimeConfig
    work: Path
    device: torch.device
    train: data_mod.ImageDataset
    heldout: data_mod.ImageDataset
    gan: _GAN
    loop: Loop

    @property
    def disc_start(self) -> int:
        """The step the PatchGAN starts at (--disc-start, else half-way)."""
        return self.loop.total // 2 if self.cfg.disc_start is None else self.cfg.disc_start

    def step(self, index: int) -> None:
        """Optimiser step `index` (from 0) and, when due, its held-out evaluation row."""
        cfg = self.cfg
        images = _batch(self.train, cfg.batch_size, cfg.seed, index).to(self.device) * 2 - 1
        figures = self.gan.train_step(images, index >= self.disc_start)
        self.loop.progress.advance(1, **figures)
        if self.loop.due(index + 1, cfg.eval_every):
            row = {"step": index + 1, **figures, **_evaluate(self.gan.vqgan, self.heldout, self.device),
                   "seconds": round(self.loop.seconds, 1)}
            append_metrics(self.work / "metrics.jsonl", row, "step")
            log.info("prime step %d: held-out PSNR %.2f dB", index + 1, row["psnr_db"])

    def write_pack(self, out: Path, classes: list[str]) -> dict:
        """The VQGAN-only pack, the held-out grid and <work>/done.json; returns pack.json's content."""
        cfg, vqgan, total = self.cfg, self.gan.vqgan, self.loop.total
        held = {"images": len(self.heldout), **_evaluate(vqgan, self.heldout, self.device),
                "source": "the data's val/test split: never trained on, not stored in the pack"}
        grid = _save_grid(vqgan, self.heldout, self.device, self.work / "heldout-grid.png")
        training = {"steps": total, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                    "disc_start": self.disc_start, "disc_weight": DISC_WEIGHT, "codebook_weight": 1.0,
                    "perceptual_weight": 0.0, "seconds": round(self.loop.seconds, 1), "device": str(self.device)}
        meta = write_pack(out, vqgan, {
            "image_size": cfg.image_size,
            "trained_on": {"data": Path(cfg.data).name, "classes": classes, "images": len(self.train)},
            "training": training, "heldout": held,
            "deviations": DEVIATIONS + _gan_deviation(self.disc_start, total), "made_by": "edgeft prime",
        }, half=cfg.half)
        artifacts.write_json(self.work / "done.json", {"pack": str(out), "grid": str(grid), **held})
        return meta


def _prime_transformer(cfg: PrimeConfig, out: Path, work: Path, progress: Progress) -> dict:
    """Trains (or resumes, or trains further) the latent transformer on the pack's codes and adds it to the pack."""
    pack = load_pack(str(out))
    f = pack.vqgan.cfg.downsampling
    arch = TransformerConfig(pack.vqgan.cfg.codebook_size, (cfg.image_size // f) ** 2, cfg.transformer_layers,
                             cfg.transformer_heads, cfg.transformer_width)
    entry = pack.meta.get("transformer")
    if entry and entry["architecture"] == arch.to_json() and entry["training"]["steps"] == cfg.transformer_steps:
        return pack.meta
    device = resolve_device(cfg.device)
    train, heldout = _codes(cfg, work, pack, device)
    torch.manual_seed(cfg.seed)
    model = LatentTransformer(arch).to(device)
    opt = optimizer(model, cfg.transformer_lr)
    checkpoint = _transformer_checkpoint(cfg, work / "transformer", {"model": model, "opt": opt}, arch, out)
    loop = Loop("prime transformer", cfg.transformer_steps, checkpoint, progress, unit_name="step",
                save_every=cfg.checkpoint_every)
    run = _TransformerRun(cfg, work / "transformer", device, model, opt, TensorDataset(train), heldout, loop)
    loop.run(run.step)
    return add_transformer(out, model, run.info(), half=pack.meta.get("dtype") == "float16")


def _transformer_checkpoint(cfg: PrimeConfig, folder: Path, parts: dict, arch: TransformerConfig,
                            out: Path) -> Checkpoint:
    """<work>/transformer/state.pt; one of another architecture or of more steps than asked is refused."""

    def vet(state: dict) -> None:
        saved, steps = state["meta"]["architecture"], int(state["position"])
        if saved != arch.to_json() or steps > cfg.transformer_steps:
            raise ConfigError(f"--transformer-*: {folder} holds a transformer of {saved} trained "
                              f"{steps} steps; ask for the same architecture and at least as many steps")

    return Checkpoint(folder / "state.pt", parts, cfg.resume, out, meta={"architecture": arch.to_json()},
                      on_restore=vet)


@dataclass
class _TransformerRun:
    """The transformer phase: minGPT's AdamW, a constant lr after a linear warm-up, held-out NLL rows."""

    cfg: PrimeConfig
    folder: Path
    device: torch.device
    model: LatentTransformer
    opt: torch.optim.Optimizer
    data: TensorDataset  # the train codes
    heldout: torch.Tensor
    loop: Loop

    @property
    def warmup(self) -> int:
        """Warm-up steps: 5% of the steps, at least 1 and at most 200."""
        return max(1, min(MAX_WARMUP, round(WARMUP_FRACTION * self.loop.total)))

    def step(self, index: int) -> None:
        """Optimiser step `index` (from 0) and, when due, its held-out NLL row."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.transformer_lr * min(1.0, (index + 1) / self.warmup)
        self.model.train()
        loss = self.model.loss(_batch(self.data, cfg.transformer_batch_size, cfg.seed, index).to(self.device).long())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.loop.progress.advance(1, loss=loss.item())
        if self.loop.due(index + 1, cfg.eval_every):
            row = {"step": index + 1, "loss": round(loss.item(), 4),
                   "heldout_nll": _nll(self.model, self.heldout, self.device), "seconds": round(self.loop.seconds, 1)}
            append_metrics(self.folder / "metrics.jsonl", row, "step")

    def info(self) -> dict:
        """The pack's `transformer` entry (besides its architecture and weights)."""
        cfg = self.cfg
        return {
            "trained_on": {"codes": len(self.data),
                           "what": "the pack VQGAN's codes of the upstream train images and their mirrors"},
            "training": {"steps": self.loop.total, "batch_size": cfg.transformer_batch_size, "lr": cfg.transformer_lr,
                         "warmup_steps": self.warmup, "optimizer": "AdamW betas (0.9, 0.95), wd 0.01 on Linear weights",
                         "seed": cfg.seed, "seconds": round(self.loop.seconds, 1), "device": str(self.device)},
            "heldout": {"images": len(self.heldout), "nll": _nll(self.model, self.heldout, self.device),
                        "uniform_nll": round(math.log(self.model.cfg.vocab_size), 4)},
        }


@torch.no_grad()
def _codes(cfg: PrimeConfig, work: Path, pack, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Code grids [N, L] of the upstream train images + mirrors and of the held-out images (cached per pack)."""
    from safetensors.torch import load_file, save_file

    path = work / "transformer" / f"codes-{pack.digest[:16]}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        return stored["train"], stored["heldout"]
    train, heldout, _ = _load_data(cfg, work)
    train = train.with_transform(data_mod.build_transform(cfg.image_size, train=False))
    vqgan = pack.vqgan.to(device)

    def encode(dataset, mirror: bool) -> torch.Tensor:
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        views = [images, images.flip(-1)] if mirror else [images]
        return torch.cat([vqgan.encode(x.to(device) * 2 - 1)[2].flatten(1).cpu()
                          for view in views for x in view.split(256)]).to(torch.int16)

    codes = {"train": encode(train, True), "heldout": encode(heldout, False)}
    artifacts.atomic_write(path, lambda tmp: save_file(codes, tmp))
    return codes["train"], codes["heldout"]


@torch.no_grad()
def _nll(model: LatentTransformer, codes: torch.Tensor, device: torch.device) -> float:
    """Mean next-code negative log-likelihood (nats per code) over code grids."""
    model.eval()
    losses = [model.loss(chunk.to(device).long()).item() * len(chunk) for chunk in codes.split(256)]
    return round(sum(losses) / len(codes), 4)


def _gan_deviation(disc_start: int, total: int) -> list[str]:
    """The deviation to record when the PatchGAN did not run (`--disc-start` >= `--steps`)."""
    if gan_phase_ran(disc_start, total):
        return []
    return [f"no PatchGAN phase (--disc-start {disc_start} >= {total} steps): L1 + codebook loss only"]


def _prepare(cfg: PrimeConfig, explicit: dict, out: Path, work: Path) -> PrimeConfig:
    """Checks the flags and, for --resume, returns the saved config (explicit flags must agree)."""
    if not cfg.data and not cfg.resume:
        raise ConfigError("--data: give the upstream images (ImageFolder directory or .zip)")
    if not cfg.out:
        raise ConfigError("--out: give the pack directory to write")
    for flag, value in (("--image-size", cfg.image_size), ("--batch-size", cfg.batch_size), ("--steps", cfg.steps or 1),
                        ("--epochs", cfg.epochs or 1), ("--channels", cfg.channels),
                        ("--codebook-size", cfg.codebook_size), ("--eval-every", cfg.eval_every),
                        ("checkpoint_every", cfg.checkpoint_every),
                        ("--transformer-layers", cfg.transformer_layers), ("--transformer-heads", cfg.transformer_heads),
                        ("--transformer-batch-size", cfg.transformer_batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if cfg.transformer_steps < 0:
        raise ConfigError(f"--transformer-steps {cfg.transformer_steps}: must be 0 (VQGAN only) or more")
    if cfg.transformer_width % cfg.transformer_heads:
        raise ConfigError(f"--transformer-width {cfg.transformer_width}: must be a multiple of --transformer-heads")
    if cfg.image_size % 4:
        raise ConfigError(f"--image-size {cfg.image_size}: must be a multiple of 4 (two 2× down-samplings)")
    saved_file = work / "config.yaml"
    if cfg.resume:
        if not saved_file.exists():
            raise ConfigError(f"--resume: {work} holds no prime run (no config.yaml); drop --resume")
        saved = build_config(PrimeConfig, str(saved_file))
        for key, value in explicit.items():
            if key not in RESUME_FREE | TRANSFORMER_OPTIONS and _plain(value) != _plain(getattr(saved, key)):
                raise ConfigError(f"--resume: --{key.replace('_', '-')} {value} differs from the saved run "
                                  f"({getattr(saved, key)}); resume with the same options")
        transformer = {k: getattr(cfg, k) for k in TRANSFORMER_OPTIONS & explicit.keys()}
        if transformer:  # the transformer may be added to (or trained further in) a finished pack
            saved = dataclasses.replace(saved, **transformer)
            artifacts.write_yaml(saved_file, saved.to_dict())
        return dataclasses.replace(saved, resume=True, device=cfg.device)
    if (out / MANIFEST).exists() or saved_file.exists():
        raise ConfigError(f"--out {out}: already holds a pack or an unfinished prime run ({work}); "
                          "pass --resume to continue it or choose another --out")
    artifacts.write_yaml(saved_file, cfg.to_dict())
    return cfg


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _load_data(cfg: PrimeConfig, work: Path) -> tuple[data_mod.ImageDataset, data_mod.ImageDataset, list[str]]:
    """Train images (train split, flipped at random) and `holdout` images of the val/test split (centre crop)."""
    splits = data_mod.open_image_folder(cfg.data, classes=cfg.classes)
    if cfg.holdout < 1 or not splits.val:
        raise DataError(f"--holdout {cfg.holdout}: needs at least 1 held-out image from the data's val/test split")
    held = sorted(random.Random(HOLDOUT_SEED).sample(splits.val, min(cfg.holdout, len(splits.val))),
                  key=lambda s: s.path)
    artifacts.write_json(work / "heldout.json", [s.path for s in held])  # file names only, never pixels
    size = cfg.image_size
    augment = v2.Compose([v2.RandomCrop(size), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    train = data_mod.ImageDataset(splits.store, splits.train, size, augment, what="upstream images")
    heldout = data_mod.ImageDataset(splits.store, held, size, data_mod.build_transform(size, train=False),
                                    what="held-out images")
    if len(train) < cfg.batch_size:
        raise DataError(f"--batch-size {cfg.batch_size}: larger than the {len(train)} upstream training images")
    return train, heldout, splits.classes


def _batch(dataset: data_mod.ImageDataset, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The images of optimiser step `step`: a seeded permutation per epoch, so a resumed run sees the same data."""
    per_epoch = len(dataset) // batch_size
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    rows = order[offset * batch_size:(offset + 1) * batch_size].tolist()
    return torch.stack([dataset[i][0] for i in rows])


@torch.no_grad()
def _evaluate(vqgan: VQGAN, heldout: data_mod.ImageDataset, device: torch.device) -> dict:
    """Mean per-image PSNR (dB) of the held-out reconstructions and how many codebook entries they use."""
    vqgan.eval()
    scores, codes = [], set()
    # no DataLoader: iterating one draws from the global RNG, and evaluating must not change the training
    for images in torch.stack([heldout[i][0] for i in range(len(heldout))]).split(256):
        images = images.to(device)
        scores.append(psnr(images, vqgan.reconstruct(images)).cpu())
        codes.update(vqgan.encode(images * 2 - 1)[2].unique().tolist())
    return {"psnr_db": round(torch.cat(scores).mean().item(), 3), "codes_used": len(codes)}


@torch.no_grad()
def _save_grid(vqgan: VQGAN, heldout: data_mod.ImageDataset, device: torch.device, path: Path) -> Path:
    """PNG of held-out originals (top row) over their reconstructions (bottom row); kept out of the pack."""
    from torchvision.utils import save_image

    images = torch.stack([heldout[i][0] for i in range(min(GRID_IMAGES, len(heldout)))]).to(device)
    rows = torch.cat([images, vqgan.reconstruct(images)]).cpu()
    artifacts.atomic_write(path, lambda tmp: save_image(rows, tmp, nrow=len(images), padding=1, format="png"))
    return path
