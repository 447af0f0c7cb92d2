"""`--teacher-views N`: the teacher's outputs on N stored augmented views per image, paired with those views."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from edgeft.cli import cli
from edgeft.compress.methods import views as views_module
from edgeft.compress.methods.views import ViewDataset, teacher_targets, teacher_views
from edgeft.errors import ConfigError
from tests.conftest import tiny_args


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class Images(torch.utils.data.Dataset):
    """Five random uint8-valued images with a random flip + crop, like a training set."""

    def __init__(self) -> None:
        self.images = torch.randint(0, 256, (5, 3, 10, 10), generator=torch.Generator().manual_seed(0)).float() / 255
        self.paths = [f"img{i}.png" for i in range(5)]
        self.transform = v2.Compose([v2.RandomCrop(8), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)


def context(tmp_path, views: int = 4) -> SimpleNamespace:
    return SimpleNamespace(run=SimpleNamespace(cache=tmp_path), config=SimpleNamespace(seed=3), image_size=8,
                           dist=SimpleNamespace(is_main=True), device=torch.device("cpu"),
                           options=SimpleNamespace(teacher_views=views))


def test_each_stored_view_is_paired_with_the_teachers_output_on_it(tmp_path):
    teacher = Teacher().eval()
    before = torch.random.get_rng_state()
    got = teacher_views(context(tmp_path), teacher, features, "features", Images(), 4, batch_size=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the draws leave the run's RNG alone
    assert got.images.shape == (5, 4, 3, 8, 8) and got.images.dtype == torch.uint8
    assert got.targets.shape == (20, 4)
    with torch.no_grad():
        expected = teacher.features(got.images.flatten(0, 1).float() / 255)
    torch.testing.assert_close(got.targets, expected, atol=1e-4, rtol=1e-4)
    assert len({got.images[i, v].sum().item() for i in range(5) for v in range(4)}) > 5  # the views differ

    dataset = ViewDataset(got.images)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        image, label = dataset[2]
        row = int(label[1])
        assert label[0] == 0 and row // 4 == 2
        assert torch.equal(image, got.images[2, row % 4].float() / 255)
        seen.add(row)
    assert len(seen) > 1  # a random one of the image's views each time


def test_views_are_seeded_and_cached(tmp_path, monkeypatch):
    teacher = Teacher().eval()
    first = teacher_views(context(tmp_path), teacher, features, "features", Images(), 3, batch_size=8)
    monkeypatch.setattr(views_module, "frozen_outputs", lambda *a: pytest.fail("recomputed a cached teacher pass"))
    again = teacher_views(context(tmp_path), teacher, features, "features", Images(), 3, batch_size=8)
    assert torch.equal(first.images, again.images) and torch.equal(first.targets, again.targets)
    monkeypatch.undo()
    elsewhere = teacher_views(context(tmp_path / "other"), teacher, features, "features", Images(), 3, batch_size=8)
    assert torch.equal(first.images, elsewhere.images)  # same seed, same draws
    other_teacher = teacher_views(context(tmp_path), Teacher().eval(), features, "features", Images(), 3, batch_size=8)
    assert not torch.allclose(first.targets, other_teacher.targets)  # another teacher is another cache entry


def test_without_views_the_teacher_sees_each_batch(tmp_path):
    teacher = Teacher().eval()
    images = Images()
    targets = teacher_targets(context(tmp_path, views=0), teacher, features, "features", images, batch_size=8)
    assert targets.dataset is images and targets.cached is None
    batch = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(targets(batch, torch.zeros(2, 2, dtype=torch.long)), teacher.features(batch))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="--teacher-views -1"):
        teacher_targets(context(tmp_path, views=-1), teacher, features, "features", images, batch_size=8)


@pytest.mark.parametrize("method,name", [("fkd", "features"), ("kdep", "kdep-taps")])
def test_distillation_runs_on_cached_views(tmp_path, tiny_data, method, name):
    out = tmp_path / method
    result = CliRunner().invoke(cli, tiny_args(tiny_data, out, "--method", method, "--teacher-views", "2"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    (cache,) = (out / "cache").glob(f"views-{name}-*.safetensors")
    stored = load_file(str(cache))
    assert stored["images"].shape == (24, 2, 3, 16, 16)
    assert stored["targets"].shape[0] == 48
    assert json.loads((out / "summary.json").read_text())["method"] == method
