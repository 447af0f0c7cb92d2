"""Every registered method runs end to end on tiny data and writes a complete run directory."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from edgeft.artifacts import StudentCard
from edgeft.cli import cli
from edgeft.compress.methods import METHODS
from tests.conftest import tiny_args

def extra_args(method: str, request) -> list[str]:
    """What a method needs beyond the tiny defaults (irf: a VQGAN pack; DIGG methods: one with a transformer)."""
    if method in ("digg", "ota", "digg-irf"):
        return ["--pack", str(request.getfixturevalue("tiny_digg_pack")), "--n-generated", "8"]
    return ["--pack", str(request.getfixturevalue("tiny_pack"))] if method == "irf" else []


@pytest.mark.parametrize("method", METHODS.names())
def test_method_runs_and_writes_the_run_directory(tmp_path, tiny_data, method, request):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, tiny_args(tiny_data, out, "--method", method, *extra_args(method, request)))
    assert result.exit_code == 0, result.output + str(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert set(summary) >= {"method", "teacher", "student", "data", "seconds"}
    assert set(summary["student"]) == {"name", "params", "macs", "accuracy", "mean_per_class_accuracy"}
    assert "baseline" not in summary  # --no-baseline
    assert set(summary["teacher"]) == {"name", "params", "accuracy", "evaluated_as"}
    assert summary["teacher"]["evaluated_as"] == ("IRF-adapted" if method in ("irf", "ota") else "linear probe")
    assert 0.0 <= summary["student"]["accuracy"] <= 1.0
    assert summary["data"] == {"train_images": 24, "val_images": 12, "classes": 3}
    card = StudentCard.from_json(json.loads((out / "student" / "card.json").read_text()))
    assert (card.arch, card.class_names, card.input_size) == ("resnet10t", ["blue", "green", "red"], (3, 16, 16))
    weights = load_file(str(out / "student" / "model.safetensors"))
    assert weights["fc.weight"].shape == (3, 512)
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").read_text().strip()
    split = json.loads((out / "data_split.json").read_text())
    assert len(split["train"]) == 24 and split["classes"] == card.class_names


def test_linear_probe_changes_only_the_classifier(tmp_path, tiny_data):
    out = tmp_path / "lp"
    args = tiny_args(tiny_data, out, "--method", "lp", "--seed", "5")
    assert CliRunner().invoke(cli, args).exit_code == 0
    import timm
    import torch

    torch.manual_seed(5)
    timm.create_model("resnet10t", num_classes=0)  # the teacher is built first with the same seed
    torch.manual_seed(5)
    init = timm.create_model("resnet10t", num_classes=3).state_dict()
    trained = load_file(str(out / "student" / "model.safetensors"))
    changed = {k for k in init if not torch.equal(init[k], trained[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_linear_probe_on_a_conv_classifier(tmp_path, tiny_data):
    """BiT's classifier is a 1×1 convolution: the probe's head must be written into it."""
    out = tmp_path / "lp-bit"
    args = tiny_args(tiny_data, out, "--method", "lp")
    args[args.index("--student") + 1] = "resnetv2_50x1_bit"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    assert load_file(str(out / "student" / "model.safetensors"))["head.fc.weight"].shape == (3, 2048, 1, 1)


def test_a_transfer_run_measures_its_gain_over_fine_tuning_alone(tmp_path, tiny_data):
    out = tmp_path / "run"
    args = [a for a in tiny_args(tiny_data, out, "--method", "aft", "--beta", "3") if a != "--no-baseline"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    baseline = summary["baseline"]
    assert baseline["method"] == "stl" and 0.0 <= baseline["accuracy"] <= 1.0
    assert summary["gain_over_baseline"] == pytest.approx(summary["student"]["accuracy"] - baseline["accuracy"], abs=1e-4)
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"aft", "baseline-finetune"} <= stages
    assert "aft vs fine-tuning alone:" in result.output


def test_the_default_method_transfers_from_a_given_teacher():
    from edgeft.config import DEFAULT_TRANSFER_METHOD, CompressConfig

    assert CompressConfig(teacher=("demo",)).method == DEFAULT_TRANSFER_METHOD != "stl"
    assert CompressConfig(teacher=()).method == "stl"
