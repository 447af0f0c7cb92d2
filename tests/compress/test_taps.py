"""The generic pre-activation tap on four timm families (random weights, tiny inputs)."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from edgeft.compress.models import Normalized
from edgeft.compress.taps import PreActivation

CASES = [  # arch, extra timm kwargs, input size, expected activation, pooling
    ("resnet18", {}, 64, "model.layer4.1.act2", "avg"),
    ("resnet50", {}, 64, "model.layer4.2.act3", "avg"),
    ("mobilenetv3_small_050", {}, 32, "model.act2", "flatten"),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, None, ""),  # pre-logits come from a norm: nothing to tap
]


def _net(arch: str, kwargs: dict) -> Normalized:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=0, exportable=True, **kwargs)
    for module in model.modules():  # timm zero-inits the last BN of each block; make pre-activations signed
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    return Normalized(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def _without_final_activation(net: Normalized, path: str) -> Normalized:
    stripped = copy.deepcopy(net)
    parent, _, leaf = path.rpartition(".")
    setattr(stripped.get_submodule(parent), leaf, nn.Identity())
    return stripped


@pytest.mark.parametrize("arch, kwargs, size, path, pool", CASES, ids=[c[0] for c in CASES])
def test_tap_returns_the_features_of_the_model_without_its_final_activation(arch, kwargs, size, path, pool):
    net = _net(arch, kwargs)
    tap = PreActivation(net, size)
    assert (tap.path, tap.pool) == (path, pool)
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        tapped, features = tap(x), net.features(x)
    assert tapped.shape == features.shape == (3, tap.dim)
    if path is None:
        assert torch.equal(tapped, features)
        return
    with torch.no_grad():
        reference = _without_final_activation(net, path).features(x)
    assert torch.allclose(tapped, reference, atol=1e-5)
    assert (tapped < 0).any() and not torch.allclose(tapped, features)  # signed, unlike the activated features
    assert torch.allclose(net.features(x), features)  # the model itself is unchanged by the hook


def test_tap_is_trainable_and_removable():
    net = _net("resnet18", {}).train()
    tap = PreActivation(net, 32)
    tap(torch.rand(4, 3, 32, 32)).pow(2).mean().backward()
    assert net.model.conv1.weight.grad is not None and net.model.conv1.weight.grad.abs().sum() > 0
    tap.remove()
    assert not net.model.layer4[1].act2._forward_pre_hooks
