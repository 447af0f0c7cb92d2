"""`edgeft profile`, `edgeft targets`, `edgeft agent` and `compress --target` through the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.config import CompressConfig
from edgeft.line import profile_and_report, with_target_exports
from edgeft.runtime.profile import ProfileConfig
from tests.conftest import tiny_args

QUICK = ["--iterations", "3", "--seconds", "0", "--warmup", "1", "--threads", "1", "--max-batch", "2"]
WIDE = {"COLUMNS": "200"}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], env=WIDE)


def test_profile_on_host_measures(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = invoke("profile", tiny_onnx, "--target", "host", *QUICK, "--json", out)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())
    assert record["label"] == "measured" and record["target"] == "host" and record["iterations"] >= 3
    assert "measured" in result.output


def test_profile_on_jetson_estimates_every_precision(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = invoke("profile", tiny_onnx, "--target", "jetson", "--json", out)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert {r["label"] for r in records} == {"estimated"}
    assert [r["precision"] for r in records] == ["fp16", "int8", "fp32"]
    assert {r["target"] for r in records} == {"jetson-orin-nano-8gb"}
    assert [r["calibration"]["label"] for r in records] == ["anchors", "transferred", "transferred"]
    assert "estimated" in result.output


@pytest.mark.parametrize("args, message", [
    (["--target", "jetsn"], "did you mean 'jetson'"),
    (["--remote", "http://127.0.0.1:9"], "--remote needs --token"),
    (["--backend", "torch"], "no student here"),
    (["--batch", "0"], "--batch 0"),
])
def test_profile_bad_input_is_exit_2(tiny_onnx: Path, args: list[str], message: str) -> None:
    result = invoke("profile", tiny_onnx, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_estimates_need_the_onnx_graph(tmp_path: Path) -> None:
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"plan")
    result = invoke("profile", plan, "--target", "pi5")
    assert result.exit_code == 2 and "need the ONNX graph" in result.output


def test_targets_json_lists_devices_with_sources() -> None:
    result = invoke("targets", "--json")
    assert result.exit_code == 0, result.output
    targets = json.loads(result.output)
    assert len(targets) >= 8
    for t in targets:
        if not t["measured"]:
            assert t["peak"] and all(f["source"] for f in t["peak"].values()) and t["memory_bandwidth"]["source"]
    table = invoke("targets")
    assert "jetson-orin-nano-8gb" in table.output and "raspberry-pi-5" in table.output


def test_agent_refuses_a_weak_token() -> None:
    result = invoke("agent", "--token", "short", "--port", "0")
    assert result.exit_code == 2 and "--token" in result.output


def fake_run(root: Path, onnx: Path) -> Path:
    """A run directory with a summary and one exported, validated ONNX engine."""
    (root / "engines" / "onnx").mkdir(parents=True)
    shutil.copy(onnx, root / "engines" / "onnx" / "model-fp32.onnx")
    (root / "export.json").write_text(json.dumps({"engines": [
        {"path": "engines/onnx/model-fp32.onnx", "format": "onnx", "precision": "fp32", "accuracy": 0.75}]}))
    (root / "summary.json").write_text(json.dumps({"method": "stl", "student": {"name": "tiny", "accuracy": 0.75}}))
    return root


def test_profile_run_dir_writes_profiles_and_report(tiny_onnx: Path, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", tiny_onnx)
    result = invoke("profile", run, *QUICK)
    assert result.exit_code == 0, result.output
    host = json.loads((run / "profiles" / "host.json").read_text())["records"]
    assert [(r["engine"], r["accuracy"]) for r in host] == [("engines/onnx/model-fp32.onnx", 0.75)]
    report = profile_and_report(run, "pi5", ProfileConfig())
    pi = json.loads((run / "profiles" / "raspberry-pi-5.json").read_text())["records"]
    assert [(r["precision"], r["label"], r["accuracy"]) for r in pi] == [("fp32", "estimated", 0.75),
                                                                          ("int8", "estimated", None)]
    assert report.html.is_file() and {r["target"] for r in report.rows} == {"host", "raspberry-pi-5"}


def test_target_fills_formats_and_precisions_unless_given() -> None:
    cfg = with_target_exports(CompressConfig(target="jetson"))
    assert cfg.target == "jetson-orin-nano-8gb" and cfg.formats == ("tensorrt", "onnx")
    assert cfg.precisions == ("fp16", "int8", "fp32")
    cfg = with_target_exports(CompressConfig(target="intel-cpu", formats=("onnx",), precisions=("fp32",)))
    assert cfg.formats == ("onnx",) and cfg.precisions == ("fp32",)


def test_compress_with_unknown_target_fails_before_training(tiny_data: Path, tmp_path: Path) -> None:
    result = invoke(*tiny_args(tiny_data, tmp_path / "run", "--target", "jetsn"))
    assert result.exit_code == 2 and "did you mean 'jetson'" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compress_with_target_exports_profiles_and_reports(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = tiny_args(tiny_data, run, "--target", "jetson", "--format", "onnx", "--precision", "fp32")
    args[args.index("--image-size") + 1] = "32"
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = json.loads((run / "profiles" / "jetson-orin-nano-8gb.json").read_text())["records"]
    assert {r["label"] for r in records} == {"estimated"} and len(records) == 3
    assert (run / "report.html").is_file() and "estimated" in result.output


def test_targets_calibrate_measures_this_host(tmp_path: Path, monkeypatch) -> None:
    import edgeft.runtime.calibrate as calibrate

    monkeypatch.setenv("EDGEFT_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "NETWORKS", {"a": (16, [(8, 3, 1, "conv")] * 2), "b": (16, [(16, 1, 1, "conv")] * 4),
                                                "c": (32, [(8, 3, 2, "conv"), (8, 3, 1, "dw")])})
    result = invoke("targets", "--calibrate", "onnxruntime", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "onnxruntime: efficiency" in result.output and (tmp_path / "host-calibration.json").is_file()
    assert invoke("targets", "--calibrate", "torch").exit_code == 2
