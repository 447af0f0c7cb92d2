"""AFT and KDEP end to end on tiny data: records, ablation flags, several teachers, resume and bad inputs."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.compress.methods.aft import holdout_split, parse_beta
from edgeft.compress.kernels import kdep_loss
from edgeft.compress.methods.common import FEATURE_KD, Standardise
from edgeft.compress.methods.kdep import LOSS_WEIGHT, fit_alignment
from edgeft.errors import ConfigError
from tests.conftest import tiny_args

SECOND_TEACHER = ["--teacher", "mobilenetv3_small_050", "--teacher-weights", "none"]  # 1024 features


def run(args: list[str]):
    return CliRunner().invoke(cli, args)


def ok(args: list[str]) -> None:
    result = run(args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def one_line_error(args: list[str], *needles: str) -> None:
    """Exit 2 naming the flag: one line from edgeft, or click's usage error for a bad choice."""
    result = run(args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("Usage:"), result.stderr
    assert all(n in result.stderr for n in needles), result.stderr


def stages(out) -> set[str]:
    return {p.name for p in (out / "checkpoints").iterdir() if (p / "done.json").exists()}


def test_aft_auto_beta_runs_the_grid_on_a_holdout_and_learns_the_feature_weights(tmp_path, tiny_data):
    out = tmp_path / "aft"
    ok(tiny_args(tiny_data, out, "--method", "aft", "--beta", "auto", "--epochs", "1"))
    record = json.loads((out / "aft.json").read_text())
    assert set(record["beta_grid_holdout_accuracy"]) == {"3", "10", "30"}
    assert record["beta"] in (3.0, 10.0, 30.0)
    assert stages(out) >= {"aft-beta3", "aft-beta10", "aft-beta30", "aft"}
    (teacher,) = record["teachers"]
    assert teacher["features"] == 512 and teacher["weight_min"] < 0.5 < teacher["weight_max"]  # s moved from 0


def test_aft_concatenates_several_teachers(tmp_path, tiny_data):
    out = tmp_path / "aft2"
    ok(tiny_args(tiny_data, out, "--method", "aft", *SECOND_TEACHER))  # default β = 10
    record = json.loads((out / "aft.json").read_text())
    assert record["beta"] == 10.0 and record["beta_grid_holdout_accuracy"] is None
    assert [t["features"] for t in record["teachers"]] == [512, 1024]
    assert json.loads((out / "summary.json").read_text())["teacher"]["name"] == "resnet10t+mobilenetv3_small_050"


def test_aft_ablations_identity_weights_and_rbf_kernel(tmp_path, tiny_data):
    out = tmp_path / "aft-ablation"
    ok(tiny_args(tiny_data, out, "--method", "aft", "--beta", "3", "--aft-weights", "identity", "--aft-kernel", "rbf"))
    record = json.loads((out / "aft.json").read_text())
    assert (record["weights"], record["kernel"]) == ("identity", "rbf")
    assert record["teachers"][0]["weight_min"] == record["teachers"][0]["weight_max"] == 1.0


def test_kdep_distils_then_fine_tunes_and_resumes_from_its_cached_alignment(tmp_path, tiny_data):
    out = tmp_path / "kdep"
    ok(tiny_args(tiny_data, out, "--method", "kdep"))
    record = json.loads((out / "kdep.json").read_text())
    assert (record["align"], record["transform"]) == ("svd", "pts")
    assert record["distillation_images"] == 24 and record["student_tap"] == "model.layer4.0.act2"
    assert stages(out) >= {"kdep-distill", "finetune"}
    (cache,) = (out / "cache").glob("kdep-align-*.safetensors")
    stamp = cache.stat().st_mtime_ns
    # kill after the distillation: the fine-tuning and the summary are gone, --resume finishes the run
    for path in (out / "checkpoints" / "finetune").iterdir():
        path.unlink()
    (out / "summary.json").unlink()
    ok(tiny_args(tiny_data, out, "--method", "kdep", "--resume"))
    assert cache.stat().st_mtime_ns == stamp and (out / "summary.json").exists()


def test_kdep_linear_alignment_on_an_unlabeled_folder(tmp_path, tiny_data, tiny_flat):
    out = tmp_path / "kdep-linear"
    ok(tiny_args(tiny_data, out, "--method", "kdep", "--align", "linear", "--transform", "none",
                 "--unlabeled", str(tiny_flat)))
    record = json.loads((out / "kdep.json").read_text())
    assert record["distillation_images"] == 30 and record["align"] == "linear"
    assert "projector.weight" in _final(out, "kdep-distill")


def test_kdep_channel_select_with_std_norm_and_several_teachers(tmp_path, tiny_data):
    out = tmp_path / "kdep-cs"
    ok(tiny_args(tiny_data, out, "--method", "kdep", "--align", "channel-select", "--transform", "std-norm",
                 *SECOND_TEACHER))
    record = json.loads((out / "kdep.json").read_text())
    assert record["teacher_taps"] == ["model.layer4.0.act2", "model.act2"] and record["teacher_width"] == 1536
    assert record["std_ratio_target"] == pytest.approx(1.0, abs=0.05)  # every target channel has unit std


def _final(out, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / stage / "final.safetensors"))


@pytest.mark.parametrize("extra, needles", [
    (["--method", "aft", "--beta", "-1"], ["--beta -1"]),
    (["--method", "aft", "--beta", "lots"], ["--beta lots"]),
    (["--method", "kdep", "--align", "pca"], ["--align"]),
    (["--method", "aft", "--aft-kernel", "cosine"], ["--aft-kernel"]),
    (["--method", "kdep", "--unlabeled", "/nonexistent/images"], ["--unlabeled", "no such file"]),
    (["--method", "kdep", "--student", "resnet50"], ["--align svd", "2048", "512"]),
    (["--method", "aft", "--kernels", "cuda"], ["--kernels cuda"]),
])
def test_bad_inputs_exit_2_with_the_flag_named(tmp_path, tiny_data, extra, needles):
    one_line_error(tiny_args(tiny_data, tmp_path / "bad", *extra), *needles)


def test_bad_yaml_choices_exit_2(tmp_path, tiny_data):
    config = tmp_path / "c.yaml"
    config.write_text("method: kdep\ntransform: softmax\n")
    one_line_error(["compress", "--config", str(config), *tiny_args(tiny_data, tmp_path / "bad")[1:]], "--transform")


def test_unlabeled_folder_without_images_exits_2(tmp_path, tiny_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    one_line_error(tiny_args(tiny_data, tmp_path / "bad", "--method", "kdep", "--unlabeled", str(empty)),
                   "--unlabeled", "0 image")


def test_parse_beta():
    assert parse_beta("auto") is None and parse_beta("10") == 10.0 and parse_beta(0) == 0.0
    for bad in ("-3", "nan", "inf", "x"):
        with pytest.raises(ConfigError):
            parse_beta(bad)


def test_holdout_split_is_stratified_seeded_and_disjoint():
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 1)
    fit, held = holdout_split(labels)
    assert sorted(fit + held) == list(range(31)) and not set(fit) & set(held)
    assert [int((labels[held] == c).sum()) for c in range(3)] == [2, 1, 0]  # 10%, at least one, none from a singleton
    assert holdout_split(labels) == (fit, held)


def test_fit_alignment_variants():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(64, 8, generator=gen) * torch.arange(1, 9, dtype=torch.float32) + 3
    svd = fit_alignment(features, "svd", 3)
    assert svd.basis.shape == (8, 3) and svd.target(features, "none").mean(0).abs().max() < 1e-4
    select = fit_alignment(features, "channel-select", 3)
    assert torch.equal(select.target(features, "none"), features[:, 5:] - features[:, 5:].mean(0))
    assert torch.allclose(select.target(features, "std-norm").std(0), torch.ones(3), atol=1e-4)
    linear = fit_alignment(features, "linear", 3)
    assert linear.basis is None and torch.equal(linear.target(features, "none"), features)


def test_the_fused_kdep_loss_path_agrees_with_the_alignment_target():
    features = torch.randn(32, 8) * 3
    alignment = fit_alignment(features, "svd", 4)
    prediction = torch.randn(32, 4)
    expected = LOSS_WEIGHT * F.mse_loss(prediction, alignment.target(features, "pts"))
    fused_path = kdep_loss(prediction, features, alignment.mean, alignment.basis, LOSS_WEIGHT, kernels="auto")
    assert fused_path.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distill_epochs_sets_the_distillation_stage_only(tmp_path, tiny_data):
    out = tmp_path / "distill-epochs"
    ok(tiny_args(tiny_data, out, "--method", "kdep", "--distill-epochs", "3"))  # --epochs 2 from tiny_args
    epochs = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        epochs[record["stage"]] = max(epochs.get(record["stage"], 0), record["epoch"])
    assert epochs["kdep-distill"] == 3 and epochs["finetune"] == 2
    one_line_error(tiny_args(tiny_data, tmp_path / "bad", "--method", "fkd", "--distill-epochs", "0"),
                   "--distill-epochs 0")


def test_numerical_rank_counts_the_spanned_directions():
    from edgeft.compress.methods.kdep import numerical_rank

    basis = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    low = torch.randn(500, 6, generator=torch.Generator().manual_seed(1)) @ basis + 3.0  # affine image of 6 dims
    assert numerical_rank(low) == 6
    assert numerical_rank(torch.randn(500, 40)) == 40


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_feature_kd_fits_a_teacher_at_any_feature_scale(scale):
    """FEATURE_KD's lr with the trainer's Nesterov SGD on standardised targets fits a linear teacher's features
    whatever their scale (the former recipe, a raw MSE at lr 0.05, leaves features of scale 0.01 unfit: R² −2.7)."""
    gen = torch.Generator().manual_seed(0)
    images, mixing = torch.randn(256, 16, generator=gen), torch.randn(16, 48, generator=gen)
    targets = (images @ mixing + 1) * scale
    standardise, student = Standardise(targets), torch.nn.Linear(16, 48)
    optimiser = torch.optim.SGD(student.parameters(), lr=FEATURE_KD.lr, momentum=0.9, nesterov=True)
    for _ in range(100):
        rows = torch.randint(0, 256, (64,), generator=gen)
        loss = F.mse_loss(student(images[rows]), standardise(targets[rows]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = student(images) * standardise.std + standardise.mean
        explained = 1 - F.mse_loss(predicted, targets) / targets.var(0, unbiased=False).mean()
    assert explained > 0.95
