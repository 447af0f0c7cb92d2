"""The upstream pack: a trained VQGAN that a model provider can release instead of its upstream data.

A pack is a directory with `vqgan.safetensors` (weights), `pack.json` (architecture, training
figures, deviations from the paper's recipe, the weights' sha256) and `card.md` (the same for
people). It holds no image data: the held-out grid that `edgeft prime` draws stays in its work
directory next to the pack, because it shows upstream images.

The latent transformer that DIGG samples from (OTA §3.2) is optional: `transformer.safetensors`
plus a `transformer` entry in pack.json (architecture, training, its own sha256). The format name
is unchanged, so VQGAN-only packs load as before (`Pack.transformer` is None) and older readers
of a pack with a transformer simply ignore it.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeft import artifacts
from edgeft.compress.generative.transformer import LatentTransformer, TransformerConfig
from edgeft.compress.generative.vqgan import VQGAN, VQGANConfig
from edgeft.errors import EdgeftError

log = logging.getLogger(__name__)

PACK_FORMAT = "edgeft-vqgan-pack/1"
WEIGHTS, MANIFEST, CARD = "vqgan.safetensors", "pack.json", "card.md"
TRANSFORMER_WEIGHTS = "transformer.safetensors"
DEMO_PACK = Path(__file__).resolve().parents[2] / "demo" / "pack"


@dataclass
class Pack:
    """A loaded pack: the frozen VQGAN and its manifest."""

    path: Path
    vqgan: VQGAN
    meta: dict
    transformer: LatentTransformer | None = None

    @property
    def digest(self) -> str:
        """sha256 of the weights (identifies the pack in caches)."""
        return self.meta["sha256"]

    def require_transformer(self, label: str | None = None) -> LatentTransformer:
        """The latent transformer, or a one-line error (naming `label`, default `--pack PATH`) on how to add it."""
        if self.transformer is None:
            raise EdgeftError(f"{label or f'--pack {self.path}'}: has no latent transformer (DIGG needs one); add it with "
                              f"`edgeft prime --out {self.path} --resume --transformer-steps 3000`")
        return self.transformer


def resolve_pack(pack: str) -> Path:
    """`demo` → the bundled pack; anything else is a directory."""
    return DEMO_PACK if pack == "demo" else Path(pack)


def load_pack(pack: str | None, device: torch.device | str = "cpu", label: str | None = None) -> Pack:
    """Loads and checks a pack; every problem is a one-line error naming `label` (default `--pack PACK`)."""
    from safetensors.torch import load_file

    if not pack:
        raise EdgeftError(f"{label or '--pack'}: irf needs a VQGAN pack; make one with `edgeft prime --data UPSTREAM --out PACK` or pass --pack demo")
    label = label or f"--pack {pack}"
    path = resolve_pack(pack)
    if not path.is_dir():
        raise EdgeftError(f"{label}: no such directory; make a pack with `edgeft prime` or pass --pack demo")
    if not (path / MANIFEST).exists() or not (path / WEIGHTS).exists():
        raise EdgeftError(f"{label}: not an edgeft pack (needs {MANIFEST} and {WEIGHTS}); make one with `edgeft prime`")
    try:
        meta = artifacts.read_json(path / MANIFEST)
    except EdgeftError as exc:
        raise EdgeftError(f"{label}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        raise EdgeftError(f"{label}: {MANIFEST} is not a {PACK_FORMAT} manifest")
    digest = sha256(path / WEIGHTS)
    if meta.get("sha256") != digest:
        raise EdgeftError(f"{label}: {WEIGHTS} does not match the sha256 in {MANIFEST} (corrupt or replaced)")
    try:
        vqgan = VQGAN(VQGANConfig.from_json(meta["architecture"]))
        state = load_file(str(path / WEIGHTS))
        vqgan.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as exc:  # noqa: BLE001 - any mismatch is the same user error
        raise EdgeftError(f"{label}: weights do not fit the recorded architecture ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120]})") from None
    transformer = _load_transformer(path, meta, label)
    if transformer is not None:
        transformer = transformer.to(device).eval().requires_grad_(False)
    return Pack(path, vqgan.to(device).eval().requires_grad_(False), meta, transformer)


def _load_transformer(path: Path, meta: dict, label: str) -> LatentTransformer | None:
    """The pack's optional latent transformer, checked against its sha256 and architecture."""
    from safetensors.torch import load_file

    entry = meta.get("transformer")
    if entry is None:
        return None
    file = path / TRANSFORMER_WEIGHTS
    if not file.exists() or entry.get("sha256") != sha256(file):
        raise EdgeftError(f"{label}: {TRANSFORMER_WEIGHTS} is missing or does not match the sha256 in {MANIFEST}")
    try:
        model = LatentTransformer(TransformerConfig.from_json(entry["architecture"]))
        model.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()})
    except Exception as exc:  # noqa: BLE001 - any mismatch is the same user error
        raise EdgeftError(f"{label}: {TRANSFORMER_WEIGHTS} does not fit its recorded architecture "
                          f"({type(exc).__name__})") from None
    return model


def write_pack(out: Path, vqgan: VQGAN, meta: dict, half: bool = False) -> dict:
    """Writes weights, pack.json (with their sha256) and card.md into `out`; returns the manifest."""
    dtype = _save_weights(out / WEIGHTS, vqgan, half)
    meta = {"format": PACK_FORMAT, "architecture": vqgan.cfg.to_json(), "dtype": dtype, **meta,
            "sha256": sha256(out / WEIGHTS)}
    artifacts.write_json(out / MANIFEST, meta)
    artifacts.write_text(out / CARD, card_markdown(meta))
    return meta


def add_transformer(out: Path, model: LatentTransformer, info: dict, half: bool = False) -> dict:
    """Writes `transformer.safetensors` into the pack `out` and records it in pack.json and card.md."""
    dtype = _save_weights(out / TRANSFORMER_WEIGHTS, model, half)
    meta = artifacts.read_json(out / MANIFEST)
    meta["transformer"] = {"architecture": model.cfg.to_json(), "dtype": dtype, **info,
                           "sha256": sha256(out / TRANSFORMER_WEIGHTS)}
    artifacts.write_json(out / MANIFEST, meta)
    artifacts.write_text(out / CARD, card_markdown(meta))
    return meta


def _save_weights(path: Path, module: torch.nn.Module, half: bool) -> str:
    """Writes `module`'s state dict as safetensors (fp16 when `half`) atomically; returns the dtype's name."""
    from safetensors.torch import save_file

    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
    artifacts.atomic_write(path, lambda tmp: save_file(state, tmp))
    return str(dtype).removeprefix("torch.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_markdown(meta: dict) -> str:
    """The pack's model card: what it is, how it was trained, how well it reconstructs, what differs from the paper."""
    arch, train, held = meta["architecture"], meta.get("training", {}), meta.get("heldout", {})
    codes = meta.get("image_size", 0) // 2 ** (len(arch["channel_mult"]) - 1)
    lines = [
        "# edgeft upstream pack (VQGAN)",
        "",
        "A VQGAN (Esser et al. 2021) trained once on upstream images: OTA's *priming* stage (§3.1). "
        "`edgeft compress --method irf --pack THIS_DIR` re-represents downstream images with it. "
        "The pack holds weights and this card only, no images.",
        "",
        f"- architecture: channels {arch['channels']}, levels {arch['channel_mult']}, {arch['num_res_blocks']} "
        f"ResNet block(s) per level, codebook {arch['codebook_size']} × {arch['embed_dim']}, "
        f"{codes}×{codes} codes at {meta.get('image_size')} px; weights {meta.get('dtype')}",
        f"- trained on: {meta.get('trained_on', {}).get('images')} images of classes "
        f"{', '.join(meta.get('trained_on', {}).get('classes', [])) or 'all'}",
        f"- training: {train.get('steps')} steps of batch {train.get('batch_size')}, Adam lr {train.get('lr')} "
        f"betas (0.5, 0.9), {_gan_phase(train)}, {train.get('seconds')} s",
        f"- held-out reconstruction PSNR: {held.get('psnr_db')} dB on {held.get('images')} upstream images "
        "that were never trained on (they are not stored here)",
        f"- codebook entries in use on the held-out images: {held.get('codes_used')} of {arch['codebook_size']}",
        *_transformer_lines(meta.get("transformer")),
        "",
        "## Deviations from the paper's recipe",
        "",
        *[f"- {d}" for d in meta.get("deviations", [])],
        "",
    ]
    return "\n".join(lines)


def _transformer_lines(entry: dict | None) -> list[str]:
    """The card's lines on the optional latent transformer."""
    if entry is None:
        return ["- latent transformer: none (DIGG needs one: `edgeft prime --out THIS_DIR --resume --transformer-steps N`)"]
    arch, train = entry["architecture"], entry.get("training", {})
    return [f"- latent transformer (DIGG, OTA §3.2): {arch['layers']} layers × {arch['heads']} heads × width "
            f"{arch['width']} over {arch['block_size']} codes; {train.get('steps')} steps of batch "
            f"{train.get('batch_size')}, AdamW lr {train.get('lr')}; held-out NLL {entry.get('heldout', {}).get('nll')} "
            "nats per code; `edgeft generate --pack THIS_DIR` samples from it"]


def gan_phase_ran(disc_start: int | None, steps: int | None) -> bool:
    """Whether the PatchGAN ran: it is off when it would start at or after the last step."""
    return disc_start is None or steps is None or disc_start < steps


def _gan_phase(training: dict) -> str:
    start = training.get("disc_start")
    return f"PatchGAN from step {start}" if gan_phase_ran(start, training.get("steps")) else "no PatchGAN phase"
