"""A tiny run directory built by hand (student card + random weights + images), shared by the export tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import write_folder
from edgeft import artifacts
from edgeft.artifacts import RunDir, StudentCard

ARCH, SIZE = "test_resnet", 32


def make_run(root: Path, arch: str = ARCH, size: int = SIZE, per_class: int = 12) -> RunDir:
    """A run as `edgeft compress` leaves it: student/, data_split.json naming a split image folder."""
    data = write_folder(root / "data", per_class=per_class, size=size)
    classes = sorted(p.name for p in (data / "train").iterdir())
    split = {
        "source": str(data),
        "classes": classes,
        "train": sorted(p.relative_to(data).as_posix() for p in (data / "train").rglob("*.png")),
        "val": sorted(p.relative_to(data).as_posix() for p in (data / "val").rglob("*.png")),
    }
    run = RunDir(root / "run")
    artifacts.write_json(run.data_split, split)
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=len(classes), exportable=True)
    run.student_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run.student_weights))
    card = StudentCard(arch=arch, num_classes=len(classes), class_names=classes, input_size=(3, size, size),
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), teacher="none", method="stl")
    artifacts.write_json(run.student_card, card.to_json())
    return run


@pytest.fixture
def tiny_run(tmp_path: Path) -> RunDir:
    return make_run(tmp_path)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """One run per test module, for tests that only read its exports."""
    return make_run(tmp_path_factory.mktemp("export"))
