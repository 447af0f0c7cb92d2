"""Precisions kept only where faster (pure policy + manifests) and the model card of every target."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.precision_policy import apply_policy, decide
from edgeft.targets import TARGETS
from tests.runtime.conftest import tiny_onnx_file
from tests.test_report import fake_run


def record(precision: str, p50: float, fmt: str = "onnx", label: str = "measured", batch: int = 1) -> dict:
    return {"target": "host", "format": fmt, "backend": "onnxruntime", "precision": precision, "label": label,
            "latency_ms": {"p50": p50}, "input": {"batch": batch}}


def test_a_lower_precision_is_kept_only_at_1_02x() -> None:
    decisions = {d.precision: d for d in decide([record("fp32", 3.10), record("fp16", 3.07), record("int8", 1.50)])}
    assert decisions["fp32"].kept and decisions["fp32"].speedup is None
    fp16 = decisions["fp16"]
    assert not fp16.kept and fp16.vs == "fp32" and abs(fp16.speedup - 3.10 / 3.07) < 1e-3
    assert fp16.reason == "fp16 1.01x vs fp32 on host (p50 3.07 ms vs 3.1 ms), below 1.02x"
    int8 = decisions["int8"]  # fp16 was dropped: int8 is judged against fp32, the next higher kept precision
    assert int8.kept and int8.vs == "fp32" and int8.speedup > 2


def test_int8_slower_than_fp16_is_dropped_and_estimates_say_so() -> None:
    (fp16, int8) = decide([record("int8", 2.0, label="estimated"), record("fp16", 1.9, label="estimated")])
    assert fp16.kept and fp16.how == "estimated"
    assert not int8.kept and int8.vs == "fp16" and int8.reason.startswith("estimated: int8 0.95x vs fp16")
    assert decide([record("fp32", 1.0, batch=8), record("int8", 0.5, batch=8)]) == []  # batch 1 only
    ort, ov = decide([record("fp32", 1.0), record("int8", 0.99), record("fp32", 1.0, fmt="openvino"),
                      record("int8", 0.5, fmt="openvino")])[1::2]
    assert (ort.format, ort.kept, ov.format, ov.kept) == ("onnx", False, "openvino", True)  # per format


def test_policy_marks_the_manifests_and_keeps_the_files(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")  # host onnx: fp32 4.0 ms, int8 2.0 ms, fp16 5.0 ms
    (run / "export.json").write_text(json.dumps({"engines": [
        {"path": f"engines/onnx/model-{p}.onnx", "format": "onnx", "precision": p, "accuracy": a,
         "reference_accuracy": 0.85} for p, a in (("fp32", 0.85), ("fp16", 0.80), ("int8", 0.84))]}))
    apply_policy(run, "host")
    rows = {r["precision"]: r for r in json.loads((run / "export.json").read_text())["engines"]}
    assert rows["fp16"]["kept"] is False and "fp16 0.80x vs fp32 on host" in rows["fp16"]["dropped_because"]
    assert rows["int8"]["kept"] is True and rows["int8"]["speed_check"]["host"]["speedup"] == 2.0
    records = json.loads((run / "profiles" / "host.json").read_text())["records"]
    assert {r["precision"]: r["precision_check"]["kept"] for r in records} == {"fp32": True, "int8": True, "fp16": False}
    result = CliRunner().invoke(cli, ["report", str(run)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "dropped: 0.80x vs fp32" in result.output and "2.00x vs fp32" in result.output
    card = json.loads((run / "cards" / "host.json").read_text())
    assert card["how"] == "measured" and card["recommended"]["precision"] == "int8"
    assert (run / "cards" / "jetson-orin-nano-8gb.md").read_text().count("ESTIMATED") == 1


def test_cards_render_for_every_target(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "engines" / "onnx").mkdir(parents=True)
    for p in ("fp32", "int8"):
        tiny_onnx_file(run / "engines" / "onnx" / f"model-{p}.onnx")
    (run / "export.json").write_text(json.dumps({"engines": [
        {"path": f"engines/onnx/model-{p}.onnx", "format": "onnx", "precision": p, "accuracy": a,
         "reference_accuracy": 0.75, "images": 64, "size_bytes": 5000, "versions": {"onnxruntime": "x"}}
        for p, a in (("fp32", 0.75), ("int8", 0.74))]}))
    (run / "summary.json").write_text(json.dumps({"method": "stl", "student": {"name": "tiny", "accuracy": 0.75},
                                                  "data": {"classes": 10}}))
    from edgeft.modelcard import make_cards
    from edgeft.runtime.profile import ProfileConfig

    quick = ProfileConfig(warmup=1, iterations=3, seconds=0, threads=1, sweep=False, layers=False)
    written = make_cards(run, ["all"], quick)
    assert sorted(p.stem for p in written) == sorted(TARGETS.names())
    for name in TARGETS.names():
        card = json.loads((run / "cards" / f"{name}.json").read_text())
        md = (run / "cards" / f"{name}.md").read_text()
        label = "measured" if name == "host" else "estimated"
        assert card["how"] == label and f"**{label.upper()}**" in md and card["target"]["name"] == name
        assert card["engines"] and all(e["how"] == label for e in card["engines"])
        assert "## What the numbers cover" in md and "| p50 ms |" in md
        size = "×".join(map(str, card["model"]["input_size"] or ["?"]))
        assert f"Every latency is at the engines' own input, {size}." in md
    host = json.loads((run / "cards" / "host.json").read_text())
    fp32 = next(e for e in host["engines"] if e["precision"] == "fp32")
    assert fp32["time_to_first_inference_ms"] > 0 and fp32["memory"]["peak_rss_mb"] > 0
    assert fp32["end_to_end_p50_ms"] > fp32["latency_ms"]["p50"] and fp32["latency_ms"]["p99"] >= fp32["latency_ms"]["p50"]
    assert host["covers"]["threads"] == "1" and "compute only" in host["covers"]["latency"]
    int8 = next(e for e in host["engines"] if e["precision"] == "int8")
    assert int8["top1_drop_points"] == 1.0 and int8["precision_check"]["vs"] == "fp32"
    pi = json.loads((run / "cards" / "raspberry-pi-5.json").read_text())
    assert pi["engines"][0]["calibration"]["label"] and "not estimated" in pi["covers"]["estimate"]


def test_report_row_card_and_gate_show_one_throughput(tmp_path: Path) -> None:
    from edgeft.gate import profile_rows
    from edgeft.modelcard import write_cards
    from edgeft.report import write_report

    run = fake_run(tmp_path / "run")
    path = run / "profiles" / "host.json"
    profile = json.loads(path.read_text())
    fp32 = next(r for r in profile["records"] if r["precision"] == "fp32")  # p50 4.0 ms at batch 1
    fp32.update(input={"batch": 1}, throughput={"images_per_s": 81.5, "sweep": [  # a stale, disagreeing figure
        {"batch": 1, "latency_ms_p50": 12.0}, {"batch": 8, "latency_ms_p50": 10.0}]})
    path.write_text(json.dumps(profile))
    row = next(r for r in write_report(run).rows if r["target"] == "host" and r["precision"] == "fp32")
    assert (row["img/s at batch"], row["best img/s (batch)"]) == ("250.0 (b1)", "800.0 (b8)")
    write_cards(run, ["host"])
    card = json.loads((run / "cards" / "host.json").read_text())
    engine = next(e for e in card["engines"] if e["precision"] == "fp32")
    assert (engine["throughput"]["images_per_s"], engine["throughput"]["best_batch"]) == (250.0, 8)
    assert "| 250.0 (b1) | 800.0 (b8) |" in (run / "cards" / "host.md").read_text()
    gate = next(r for r in profile_rows(profile["records"]) if r["name"].startswith("onnx fp32"))
    assert gate["fps"] == 250.0


def test_cards_recommend_only_validated_engines_and_say_what_was_not_built(tmp_path: Path) -> None:
    from edgeft.modelcard import write_cards

    run = fake_run(tmp_path / "run")
    target = "jetson-orin-nano-8gb"
    layers = [{"name": "conv1", "op": "Conv", "ms": 0.1}]
    estimates = [{"label": "estimated", "target": target, "format": "tensorrt", "backend": "tensorrt",
                  "precision": p, "engine": f"engines/onnx/model-{source}.onnx", "latency_ms": {"p50": p50},
                  "accuracy": acc, "layers": layers, "batch": 1}
                 for p, source, p50, acc in (("fp32", "fp32", 3.0, 0.85), ("fp16", "fp16", 1.5, 0.85),
                                             ("int8", "fp32", 0.7, None))]  # int8: refused, estimated from fp32
    (run / "profiles" / f"{target}.json").write_text(json.dumps({"target": target, "records": estimates}))
    reason = "onnx int8 export failed validation against PyTorch (accuracy 52.60% is 2.6 points below)"
    (run / "export.json").write_text(json.dumps({
        "engines": [{"path": f"engines/onnx/model-{p}.onnx", "format": "onnx", "precision": p, "accuracy": 0.85,
                     "reference_accuracy": 0.85, "passed": True} for p in ("fp32", "fp16")],
        "refused": [{"format": "onnx", "precision": "int8", "reason": reason}]}))
    write_cards(run, [target])
    card = json.loads((run / "cards" / f"{target}.json").read_text())
    assert card["recommended"]["precision"] == "fp16"  # int8 is faster, but refused
    assert "estimate; engine not built here" in card["recommended"]["status"]
    assert [e["precision"] for e in card["engines"]] == ["fp32", "fp16"]  # the refused int8 has no figures
    assert card["refused"] == [{"format": "onnx", "precision": "int8", "reason": reason}]
    md = (run / "cards" / f"{target}.md").read_text()
    assert "tensorrt fp16 on tensorrt (fastest kept and validated, p50; estimate; engine not built here)" in md
    assert "## Refused at export (never recommended)" in md and f"- onnx int8: {reason}" in md
    assert md.count("ONNX only (estimate; engine not built here)") == 2
    from edgeft.report import write_report

    report = write_report(run)
    assert [r["precision"] for r in report.rows if r["target"] == target] == ["fp32", "fp16"]
    assert f"refused: onnx int8**: {reason}" in report.markdown.read_text()
