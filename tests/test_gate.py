"""`--fail-if`: the expression parser, the per-engine evaluation, and exit codes 0 / 2 / 3 on the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.errors import EdgeftError
from edgeft.export.base import ExportRecord
from edgeft.gate import GateFailed, export_rows, for_command, parse, profile_rows
from tests.conftest import tiny_args
from tests.runtime.conftest import tiny_onnx_file

QUICK = ["--iterations", "3", "--seconds", "0", "--warmup", "1", "--threads", "1", "--no-sweep", "--no-layers"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "200"})


def test_and_binds_tighter_than_or_and_parentheses_group() -> None:
    row = {"name": "e", "top1_drop": 0.5, "p99_ms": 9.0, "fps": 100.0}
    assert parse("top1_drop>1.0 or p99_ms>8").root.holds(row)
    assert not parse("top1_drop > 1 and p99_ms > 8").root.holds(row)
    assert parse("top1_drop>1 and fps<50 or p99_ms>=9").root.holds(row)  # (a and b) or c
    assert not parse("top1_drop>1 and (fps<50 or p99_ms>=9)").root.holds(row)
    assert [parse(f"fps {op} 100").root.holds(row) for op in ("<", "<=", ">", ">=", "==", "!=")] == [
        False, True, False, True, True, False]
    assert parse("p99_ms>1e1 or top1_drop<-0.5").metrics == ["p99_ms", "top1_drop"]


@pytest.mark.parametrize("text, message", [
    ("p99_ms>>8", "expected a number"),
    ("p99_ms>8 or", "expected a metric name at the end"),
    ("(p99_ms>8", "expected ')'"),
    ("p99_ms>8)", "unexpected ')'"),
    ("p99_ms>8; rm -rf /", "unexpected ';"),
    ("__import__>1", "unknown metric '__import__'"),
    ("open('x')", "unexpected"),
    ("latency>8", "known: top1_drop, accuracy"),
    ("", "empty expression"),
])
def test_bad_expressions_fail_naming_the_flag(text: str, message: str) -> None:
    with pytest.raises(EdgeftError, match="--fail-if") as err:
        parse(text)
    assert message in str(err.value) and err.value.exit_code == 2


def test_metrics_a_command_cannot_produce_fail_at_entry() -> None:
    for_command("top1_drop>1 or p99_ms>8", "compress", exported=True, target="host")
    with pytest.raises(EdgeftError, match="p99_ms not measured by `edgeft compress` on jetson"):
        for_command("p99_ms>8", "compress", exported=True, target="jetson")
    with pytest.raises(EdgeftError, match="top1_drop not measured by `edgeft compress`; it gives accuracy"):
        for_command("top1_drop>1", "compress")
    with pytest.raises(EdgeftError, match="of an engine file"):
        for_command("accuracy<50", "profile", target="host", run=False)
    assert for_command("p99_ms>8", "profile", target="pi5", remote=True).metrics == ["p99_ms"]


def test_violations_name_engine_metric_value_and_limit() -> None:
    rows = export_rows([
        {"format": "onnx", "precision": "fp32", "accuracy": 0.80, "reference_accuracy": 0.80, "size_bytes": 4e6},
        {"format": "onnx", "precision": "int8", "accuracy": 0.77, "reference_accuracy": 0.80, "size_bytes": 1e6}])
    gate = parse("top1_drop>1.0 or size_mb>3")
    with pytest.raises(GateFailed) as err:
        gate.judge(rows)
    assert err.value.exit_code == 3
    assert "onnx fp32: size_mb 4 (size_mb > 3)" in str(err.value)
    assert "onnx int8: top1_drop 3 (top1_drop > 1)" in str(err.value) and "violated by 2 of 2" in str(err.value)
    assert "passed on 2" in parse("top1_drop>5").judge(rows)
    with pytest.raises(EdgeftError, match="p99_ms was not measured for onnx fp32"):
        parse("p99_ms>8").judge(rows)


def test_profile_rows_skip_the_reference_and_dropped_engines() -> None:
    records = [{"format": f, "precision": p, "target": "host", "label": "measured", "latency_ms": {"p50": 1, "p99": 2},
                "load_ms": 5, "first_inference_ms": 1, "memory": {"peak_increase_mb": 7}, "precision_check": c}
               for f, p, c in (("torch", "fp32", None), ("onnx", "fp32", {"kept": True}), ("onnx", "int8", {"kept": False}))]
    (row,) = profile_rows(records)
    assert row["name"] == "onnx fp32 on host (measured)" and row["first_inference_ms"] == 6 and row["peak_mb"] == 7


def _profiled_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "engines" / "onnx").mkdir(parents=True)
    tiny_onnx_file(run / "engines" / "onnx" / "model-fp32.onnx")
    (run / "export.json").write_text(json.dumps({"engines": [
        {"path": "engines/onnx/model-fp32.onnx", "format": "onnx", "precision": "fp32", "accuracy": 0.70,
         "reference_accuracy": 0.72, "top1_agreement": 0.97, "size_bytes": 2000}]}))
    (run / "summary.json").write_text(json.dumps({"method": "stl", "student": {"name": "tiny", "accuracy": 0.72}}))
    return run


def test_profile_fail_if_exits_3_when_violated_and_0_otherwise(tmp_path: Path) -> None:
    run = _profiled_run(tmp_path)
    ok = invoke("profile", run, *QUICK, "--fail-if", "top1_drop>5 or p99_ms>60000")
    assert ok.exit_code == 0 and "passed on 1 (onnx fp32 on host (measured))" in ok.output, ok.output
    bad = invoke("profile", run, *QUICK, "--fail-if", "top1_drop>1.0 or p99_ms>60000")
    assert bad.exit_code == 3, bad.output
    assert "onnx fp32 on host (measured): top1_drop 2 (top1_drop > 1)" in bad.output


def test_bad_fail_if_is_exit_2_before_any_work(tmp_path: Path, tiny_data: Path) -> None:
    run = _profiled_run(tmp_path)
    result = invoke("profile", run, *QUICK, "--fail-if", "p99 > 8")
    assert result.exit_code == 2 and "unknown metric 'p99'" in result.output
    assert not (run / "profiles").exists()
    result = invoke("profile", run / "engines" / "onnx" / "model-fp32.onnx", "--fail-if", "top1_drop>1")
    assert result.exit_code == 2 and "of an engine file" in result.output
    out = tmp_path / "never"
    result = invoke(*tiny_args(tiny_data, out, "--fail-if", "p99_ms>8"))
    assert result.exit_code == 2 and "p99_ms not measured by `edgeft compress`" in result.output
    assert not out.exists()


def test_export_fail_if_judges_every_engine(tmp_path: Path, monkeypatch) -> None:
    import edgeft.export

    figures = dict(images=8, max_abs_diff=0.1, cosine=0.99, top1_agreement=0.95, reference_accuracy=0.8, scale=1.0,
                   passed=True, validated_with="onnxruntime")
    records = [ExportRecord(**figures, accuracy=acc, path=f"engines/onnx/model-{p}.onnx", format="onnx", precision=p,
                            size_bytes=size) for p, acc, size in (("fp32", 0.8, 4_000_000), ("int8", 0.78, 1_000_000))]
    calls = []
    exported = edgeft.export.ExportResult([("onnx", "fp32"), ("onnx", "int8")], records)
    monkeypatch.setattr(edgeft.export, "export_run", lambda *a, **k: calls.append(a) or exported)
    result = invoke("export", tmp_path, "--precision", "fp32,int8", "--fail-if", "top1_drop>1.0 or size_mb>3")
    assert result.exit_code == 3, result.output
    assert "onnx fp32: size_mb 4 (size_mb > 3)" in result.output and "onnx int8: top1_drop 2 (top1_drop > 1)" in result.output
    result = invoke("export", tmp_path, "--fail-if", "agreement<90 or top1_drop>5")
    assert result.exit_code == 0 and "passed on 2 (onnx fp32, onnx int8)" in result.output, result.output
    calls.clear()
    result = invoke("export", tmp_path, "--fail-if", "p99_ms>8")
    assert result.exit_code == 2 and "p99_ms not measured by `edgeft export`" in result.output and not calls


def test_compress_fail_if_judges_the_student_after_training(tiny_data: Path, tmp_path: Path) -> None:
    result = invoke(*tiny_args(tiny_data, tmp_path / "run", "--fail-if", "accuracy<=100"))
    assert result.exit_code == 3 and "student (PyTorch): accuracy" in result.output, result.output
    assert (tmp_path / "run" / "summary.json").is_file()  # the run is kept; only the exit code says "failed"
