"""Frozen teacher outputs through OpenVINO / ONNX Runtime equal PyTorch's, in order; PyTorch is the fallback."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeft.compress import models, teacher_engine
from edgeft.runtime import BACKENDS


def teacher_and_loader(size: int = 32):
    spec = models.resolve("resnet10t", "none", role="teacher")
    teacher = models.create(spec, num_classes=0, role="teacher").eval().requires_grad_(False)
    images = torch.rand(10, 3, size, size)
    return teacher, DataLoader(TensorDataset(images, torch.zeros(10)), batch_size=4)


def features(model, x):
    return model.features(x)


def test_runtime_outputs_match_pytorch_in_order(caplog):
    teacher, loader = teacher_and_loader()
    expected = torch.cat([teacher.features(x) for x, _ in loader])
    caplog.set_level("INFO", logger="edgeft.compress.teacher_engine")
    got = teacher_engine.frozen_outputs(teacher, loader, features, torch.device("cpu"))
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-3)
    assert "teacher outputs through openvino" in caplog.text  # the fastest runtime, not the fallback


def test_without_a_runtime_pytorch_computes_them(monkeypatch):
    teacher, loader = teacher_and_loader()
    for name in teacher_engine.RUNTIMES:
        monkeypatch.setattr(BACKENDS.get(name), "available", classmethod(lambda cls: False))
    expected = torch.cat([teacher.features(x) for x, _ in loader])
    assert torch.equal(teacher_engine.frozen_outputs(teacher, loader, features, torch.device("cpu")), expected)


@pytest.mark.parametrize("first", ["openvino", "onnxruntime"])
def test_a_runtime_that_cannot_open_the_graph_hands_over(monkeypatch, first):
    from edgeft.errors import EdgeftError

    teacher, loader = teacher_and_loader()

    def refuse(self):
        raise EdgeftError("cannot read it")

    monkeypatch.setattr(BACKENDS.get(first), "open", refuse)
    expected = torch.cat([teacher.features(x) for x, _ in loader])
    got = teacher_engine.frozen_outputs(teacher, loader, features, torch.device("cpu"))
    assert torch.allclose(got, expected, atol=1e-3)
