"""report.md / report.html from a run directory's JSON (no training needed)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.errors import EdgeftError
from edgeft.report import build_report, layer_bars, pareto, training_curves, write_report


def fake_run(root: Path) -> Path:
    """A run with a summary, two stages of metrics and measured + estimated profiles."""
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps({
        "method": "kd", "teacher": {"name": "resnet50", "params": 25e6, "accuracy": 0.9},
        "student": {"name": "resnet18", "params": 11e6, "macs": 1.8e9, "accuracy": 0.85},
        "data": {"train_images": 100, "val_images": 50, "classes": 5}, "seconds": 10}))
    rows = [{"stage": s, "epoch": e, "loss": 1.0 / (e + i), "train_acc": 0.5 + 0.1 * e, "val_acc": 0.5 + 0.08 * e}
            for i, s in enumerate(["probe", "finetune"]) for e in (1, 2, 3)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    layers = [{"name": f"conv{i}", "op": "Conv", "ms": 0.1 * i} for i in range(1, 25)]
    measured = [{"label": "measured", "target": "host", "format": "onnx", "backend": "onnxruntime", "precision": p,
                 "latency_ms": {"p50": lat, "p90": lat * 1.1, "p99": lat * 1.3}, "accuracy": acc, "layers": layers,
                 "throughput": {"best": {"batch": 8, "images_per_s": 1000 / lat}}}
                for p, lat, acc in (("fp32", 4.0, 0.85), ("int8", 2.0, 0.84), ("fp16", 5.0, 0.80))]
    estimated = [{"label": "estimated", "target": "jetson-orin-nano-8gb", "format": "tensorrt", "backend": "tensorrt",
                  "precision": "fp16", "latency_ms": {"p50": 1.5}, "accuracy": 0.85, "layers": layers[:5],
                  "throughput": {"best": {"batch": 16, "images_per_s": 2000}}}]
    (root / "profiles").mkdir()
    (root / "profiles" / "host.json").write_text(json.dumps({"target": "host", "records": measured}))
    (root / "profiles" / "jetson-orin-nano-8gb.json").write_text(json.dumps({"records": estimated}))
    return root


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(4.0, 0.85), (2.0, 0.84), (5.0, 0.80), (1.5, 0.85), (3.0, 0.83)]
    assert pareto(points) == [(1.5, 0.85)]
    assert pareto([(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9)]) == [(1, 0.5), (2, 0.7), (4, 0.9)]
    # a tie in accuracy: only the faster one; a tie in latency: only the more accurate one
    assert pareto([(2, 0.8), (1, 0.8), (1, 0.7), (3, 0.9)]) == [(1, 0.8), (3, 0.9)]


def test_training_curves_are_per_stage_with_the_teacher_apart() -> None:
    rows = ([{"stage": "probe", "epoch": e, "loss": 1.0, "val_acc": 0.5} for e in (1, 2)]
            + [{"stage": "teacher-probe", "epoch": e, "loss": 0.5, "train_acc": 0.7} for e in (1, 2, 3)]
            + [{"stage": "finetune", "epoch": e, "loss": 0.8, "val_acc": 0.6} for e in (1, 2, 3)]
            + [{"stage": "finetune", "summary": True}])  # rows without a loss are not epochs
    curves = training_curves(rows)
    assert [(c.stage, c.x) for c in curves["student"]] == [("probe", [1, 2]), ("finetune", [3, 4, 5])]
    assert [(c.stage, c.x) for c in curves["teacher"]] == [("teacher-probe", [1, 2, 3])]
    assert curves["teacher"][0].val_acc == [None] * 3 and curves["student"][1].val_acc == [0.6] * 3


def test_the_baseline_starts_at_epoch_one_beside_the_method() -> None:
    rows = ([{"stage": "aft", "epoch": e, "loss": 1.0, "val_acc": 0.5} for e in (1, 2, 3)]
            + [{"stage": "baseline-finetune", "epoch": e, "loss": 0.9, "val_acc": 0.4} for e in (1, 2)]
            + [{"stage": "later", "epoch": 1, "loss": 0.5}])
    curves = training_curves(rows)["student"]
    assert [(c.stage, c.x) for c in curves] == [("aft", [1, 2, 3]), ("baseline-finetune", [1, 2]), ("later", [4])]


def test_report_facts_put_the_student_beside_fine_tuning_alone_and_the_teacher(tmp_path) -> None:
    from edgeft.report import _facts

    summary = {"method": "aft", "student": {"name": "resnet18", "accuracy": 0.458, "params": 1, "macs": 1},
               "teacher": {"name": "lite0", "accuracy": 0.672, "evaluated_as": "linear probe"},
               "baseline": {"method": "stl", "accuracy": 0.426}, "gain_over_baseline": 0.032, "data": {}}
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "card.json").write_text('{"input_size": [3, 64, 64]}')
    facts = dict(_facts(type("R", (), {"summary": summary, "refused": [], "run": tmp_path})()))
    assert facts["fine-tuned alone (stl)"] == "42.60%" and facts["gain over fine-tuning alone"] == "+3.20 points"
    assert facts["teacher (linear probe)"] == "67.20%"
    assert facts["input"].startswith("3×64×64 (the engines' own resolution")  # the latencies' resolution, named


def test_layer_bars_name_modules_and_sum_their_kernels() -> None:
    record = {"layers": [{"name": "relu_nchwc", "op": "Conv", "ms": 0.2, "module": "stem.conv"},
                         {"name": "relu_token_3", "op": "Conv", "ms": 0.1, "module": "stem.conv"},
                         {"name": "node_linear", "op": "Gemm", "ms": 0.25, "module": "head"},
                         {"name": "ReorderOutput", "op": "ReorderOutput", "ms": 0.05, "module": None}]}
    bars = layer_bars(record)
    assert [name for name, _ in bars] == ["stem.conv · Conv", "head · Gemm", "ReorderOutput (ReorderOutput)"]
    assert bars[0][1] == pytest.approx(0.3)


def test_no_per_layer_chart_for_an_engine_that_was_only_estimated(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    (run / "profiles" / "host.json").unlink()
    report = build_report(run)
    assert report.rows and all(r["how"] == "estimated" for r in report.rows)
    assert not [title for title in report.figures if title.startswith("Per-layer")]


def test_report_has_rows_figures_and_a_self_contained_html(tmp_path: Path) -> None:
    report = write_report(fake_run(tmp_path / "run"))
    assert [r["how"] for r in report.rows] == ["measured"] * 3 + ["estimated"]  # host first
    assert set(report.figures) == {"Training curves", "Accuracy vs latency", "Per-layer time (measured, host)"}
    html = report.html.read_text()
    assert html.count("data:image/png;base64,") == 3 and "src='report/" not in html and "http" not in html
    png = base64.b64decode(html.split("data:image/png;base64,")[1].split("'")[0])
    assert png.startswith(b"\x89PNG")
    md = report.markdown.read_text()
    assert "| host | onnx | int8 | measured | 2.000 |" in md and "estimated" in md
    assert all((report.run / "report" / name).is_file() for name in ("training-curves.png", "accuracy-vs-latency.png"))


def test_report_without_profiles_says_how_to_get_them(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    for f in (run / "profiles").iterdir():
        f.unlink()
    report = write_report(run)
    assert report.rows == [] and "edgeft profile RUN_DIR --target" in report.markdown.read_text()
    assert "Training curves" in report.figures and "Accuracy vs latency" not in report.figures


def test_report_needs_a_summary(tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="no summary.json"):
        build_report(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no summary.json" in result.output


def test_report_cli_prints_the_summary_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(fake_run(tmp_path / "run"))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "edgeft report" in result.output and "estimated" in result.output and "report.html" in result.output
