from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from edgeft.compress import models
from edgeft.errors import WeightsError


def test_paper_alias_resolves_to_timm_name_and_preprocessing():
    spec = models.resolve("bit_m_r50x1", None, role="teacher")
    assert spec.timm_name == "resnetv2_50x1_bit.goog_in21k"
    assert spec.arch == "resnetv2_50x1_bit"
    assert spec.mean == (0.5, 0.5, 0.5) and spec.weights == "hub"


def test_unknown_model_suggests_close_names():
    with pytest.raises(WeightsError, match=r"--teacher resnet181: unknown model \(did you mean 'resnet18'"):
        models.resolve("resnet181", None, role="teacher")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_and_a_new_head_is_kept(tmp_path, suffix):
    source = timm.create_model("resnet10t", num_classes=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    spec = models.resolve("resnet10t", str(path), role="student")
    model = models.create(spec, num_classes=3, role="student")
    assert torch.equal(model.model.conv1[0].weight, source.conv1[0].weight)
    assert model.model.fc.out_features == 3
    backbone = models.create(spec, num_classes=0, role="teacher")
    assert backbone.features(torch.rand(2, 3, 32, 32)).shape == (2, backbone.num_features)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="weights do not fit"):
        models.create(models.resolve("resnet10t", str(path), role="teacher"), 0, role="teacher")


def test_corrupt_weights_file_is_one_line_error(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="--teacher-weights .*: not a weights file"):
        models.create(models.resolve("resnet10t", str(path), role="teacher"), 0, role="teacher")


def test_offline_hub_fails_fast_naming_the_flag(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("from edgeft.compress import models\n"
            "spec = models.resolve('bit_m_r50x1', None, role='teacher')\n"
            "models.create(spec, 0, role='teacher')\n")
    began = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--teacher-weights" in proc.stderr and "unreachable" in proc.stderr
    assert time.time() - began < 60  # generous: the 5 s bound is on the CLI, checked in test_cli


def test_macs_and_params_of_resnet18():
    model = models.create(models.resolve("resnet18", "none", role="student"), 10, role="student")
    assert models.count_params(model) == sum(p.numel() for p in timm.create_model("resnet18", num_classes=10).parameters())
    assert 1.7e9 < models.count_macs(model, 224) < 1.9e9  # ResNet-18: 1.8 GMACs at 224 px


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv3_large_100"])
def test_num_features_is_the_width_of_the_pooled_features(arch):
    model = models.create(models.resolve(arch, "none", role="student"), 10, role="student").eval()
    with torch.no_grad():
        assert model.features(torch.rand(1, 3, 32, 32)).shape == (1, model.num_features)


def test_depthwise_nets_are_built_channels_last_and_resnets_are_not():
    mobile = models.create(models.resolve("mobilenetv3_large_100", "none", role="student"), 10, role="student")
    resnet = models.create(models.resolve("resnet18", "none", role="student"), 10, role="student")
    assert mobile.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not mobile.model.conv_stem.weight.is_contiguous()
    assert resnet.model.conv1.weight.is_contiguous()
    x = torch.rand(2, 3, 64, 64)
    reference = timm.create_model("mobilenetv3_large_100", num_classes=10).eval()
    reference.load_state_dict(mobile.model.state_dict())
    with torch.no_grad():  # same function: only the memory layout changed
        torch.testing.assert_close(mobile.eval().model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_zero_head_starts_a_new_head_at_zero_and_keeps_a_loaded_one(tmp_path):
    spec = models.resolve("resnet18", "none", role="student")
    torch.manual_seed(0)
    zero = models.create(spec, 5, role="student", zero_head=True)
    torch.manual_seed(0)
    default = models.create(spec, 5, role="student")
    assert not zero.model.fc.weight.any() and not zero.model.fc.bias.any()
    assert default.model.fc.weight.abs().sum() > 0
    assert torch.equal(zero.model.conv1.weight, default.model.conv1.weight)  # the backbone is untouched
    path = tmp_path / "five.safetensors"
    save_file({k: v.contiguous() for k, v in default.model.state_dict().items()}, str(path))
    loaded = models.create(models.resolve("resnet18", str(path), role="student"), 5, role="student", zero_head=True)
    assert torch.equal(loaded.model.fc.weight, default.model.fc.weight)  # a head of the same shape is loaded


def _bit_npz(model, path) -> None:
    """Writes `model` (a timm BiT ResNetV2) in the official BiT .npz layout (HWIO kernels)."""
    import numpy as np

    def hwio(t):
        a = t.detach().numpy()
        return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a

    out = {"resnet/root_block/standardized_conv2d/kernel": hwio(model.stem.conv.weight),
           "resnet/group_norm/gamma": hwio(model.norm.weight), "resnet/group_norm/beta": hwio(model.norm.bias)}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            p = f"resnet/block{i + 1}/unit{j + 1:02d}/"
            for letter, conv, norm in (("a", block.conv1, block.norm1), ("b", block.conv2, block.norm2),
                                       ("c", block.conv3, block.norm3)):
                out[f"{p}{letter}/standardized_conv2d/kernel"] = hwio(conv.weight)
                out[f"{p}{letter}/group_norm/gamma"] = hwio(norm.weight)
                out[f"{p}{letter}/group_norm/beta"] = hwio(norm.bias)
            if block.downsample is not None:
                out[f"{p}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    np.savez(path, **out)


def test_official_bit_npz_weights_load(tmp_path):
    source = timm.create_model("resnetv2_50x1_bit", num_classes=0)
    path = tmp_path / "BiT-M-R50x1.npz"
    _bit_npz(source, path)
    teacher = models.create(models.resolve("bit_m_r50x1", str(path), role="teacher"), 0, role="teacher")
    for (name, mine), theirs in zip(teacher.model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(mine, theirs), name
