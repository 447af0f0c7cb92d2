"""Tiny engines for the runtime tests, built without torch (onnx.helper)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.runtime.calibrate import synthetic_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_onnx_file(path: Path, size: int = 16) -> Path:
    """Two convolutions and a linear head on 16x16 images, with a student card in the metadata."""
    import onnx

    synthetic_model(path, size, [(8, 3, 2, "conv"), (8, 3, 1, "dw")])
    model = onnx.load(str(path))
    card = {"arch": "synthetic", "num_classes": 10, "input_size": [3, size, size], "mean": MEAN, "std": STD}
    model.metadata_props.add(key="edgeft.card", value=json.dumps(card))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return tiny_onnx_file(tmp_path / "tiny-fp32.onnx")
