"""Pre-activation feature taps: a model's pooled penultimate features *before* its final activation.

KDEP (He et al. 2022, §3.2) distils features taken before the last ReLU, since SVD-projected
targets are signed. timm models differ in where that activation sits (ResNet: the last block's
`act`; BiT/ResNetV2: the `norm.act` after the last stage; MobileNetV3: `act2` after the pooled
1×1 head conv; ViT/ConvNeXt: none — their pre-logits come from a norm). `PreActivation` finds it
generically: it runs the model once, takes the last activation module executed, and checks that
pooling its output reproduces the model's pre-logits features. Its input, pooled the same way, is
then the pre-activation feature; when no activation passes the check, the features are already
pre-activation and are returned as they are.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def _activation_types() -> tuple[type, ...]:
    from timm.layers import activations

    native = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
              nn.Hardswish, nn.Softplus, nn.Tanh)
    timm_own = (activations.Swish, activations.Mish, activations.HardSwish, activations.HardMish,
                activations.GELU, activations.GELUTanh, activations.QuickGELU, activations.PReLU, activations.Tanh)
    return native + timm_own


POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "flatten": lambda x: x.flatten(1),  # already pooled (e.g. MobileNetV3's head)
    "avg": lambda x: x.flatten(2).mean(-1),
    "max": lambda x: x.flatten(2).amax(-1),
}


class PreActivation:
    """Callable `tap(images) -> [B, dim]` pooled pre-activation features of `net` (a `Normalized` model).

    `path` names the final activation module (None: the features are used as they are) and `pool`
    how its input is pooled. A forward pre-hook on that module captures the input; call `remove()`
    when done. Gradients flow through the tapped tensor, so the tap can be trained.
    """

    def __init__(self, net: nn.Module, image_size: int) -> None:
        self.net = net
        self.path, self.pool, self.dim = self._locate(image_size)
        self._captured: torch.Tensor | None = None
        self._handle = None
        if self.path is not None:
            module = net.get_submodule(self.path)
            self._handle = module.register_forward_pre_hook(self._capture)
        log.info("pre-activation tap of %s: %s", type(getattr(net, "model", net)).__name__,
                 f"input of {self.path} ({self.pool} pool)" if self.path else "pre-logits features (no final activation)")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.features(images)
        if self.path is None:
            return features
        captured, self._captured = self._captured, None
        return POOLS[self.pool](captured)

    def remove(self) -> None:
        """Detaches the hook from the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _capture(self, module: nn.Module, args: tuple) -> None:
        # A clone, because the activation may run in place and overwrite its input.
        self._captured = args[0].clone()

    @torch.no_grad()
    def _locate(self, image_size: int) -> tuple[str | None, str, int]:
        """(module path of the final activation or None when the features are pre-activation, pooling, width)."""
        kinds = _activation_types()
        order: list[tuple[str, torch.Tensor]] = []
        handles = [
            module.register_forward_hook(lambda m, args, out, name=name: order.append((name, out.detach().clone())))
            for name, module in self.net.named_modules() if isinstance(module, kinds)
        ]
        was_training = self.net.training
        self.net.eval()
        try:
            device = next(self.net.parameters()).device
            probe = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
            features = self.net.features(probe)
        finally:
            for handle in handles:
                handle.remove()
            self.net.train(was_training)
        if order:
            name, output = order[-1]
            for pool, fn in POOLS.items():
                if output.dim() >= 2 and output.shape[:2] == features.shape[:2] and (
                        pool == "flatten" or output.dim() > 2):
                    pooled = fn(output)
                    if pooled.shape == features.shape and torch.allclose(pooled, features, rtol=1e-4, atol=1e-5):
                        return name, pool, features.shape[1]
        return None, "", features.shape[1]
