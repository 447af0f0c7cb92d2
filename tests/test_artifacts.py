from __future__ import annotations

import pytest

from edgeft import artifacts
from edgeft.artifacts import ExportManifest, ProfileManifest, RunDir, StudentCard


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "summary.json"
    artifacts.write_json(path, {"ok": 1})

    def broken(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write('{"half":')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write(path, broken)
    assert artifacts.read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_student_card_round_trip():
    card = StudentCard("resnet18", 2, ["a", "b"], (3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "demo", "stl")
    assert StudentCard.from_json(card.to_json()) == card


def test_jsonl_round_trip(tmp_path):
    rows = [{"epoch": 1}, {"epoch": 2}]
    artifacts.write_jsonl(tmp_path / "m.jsonl", rows)
    assert artifacts.read_jsonl(tmp_path / "m.jsonl") == rows
    assert artifacts.read_jsonl(tmp_path / "missing.jsonl") == []


def test_export_manifest_round_trips_and_a_run_without_one_reads_empty(tmp_path):
    assert ExportManifest.read(tmp_path) == ExportManifest()
    row = {"format": "onnx", "precision": "fp32", "path": "engines/onnx/model-fp32.onnx"}
    refusal = {"format": "onnx", "precision": "int8", "reason": "failed validation"}
    written = ExportManifest([row], [refusal], str(tmp_path), "2026-01-01T00:00:00+00:00").write(tmp_path)
    assert written == RunDir(tmp_path).export_manifest and RunDir(tmp_path).is_run()
    manifest = ExportManifest.read(tmp_path)
    assert manifest.engine("onnx", "fp32") == row and manifest.engine("onnx", "int8") is None
    assert manifest.reasons() == {("onnx", "int8"): "failed validation"}
    assert list(artifacts.read_json(written)) == ["run", "updated", "engines", "refused"]  # the file's own order


def test_profile_manifest_lives_at_profiles_target_json(tmp_path):
    assert ProfileManifest.read(tmp_path, "host").records == []
    ProfileManifest("host", [{"engine": "student", "backend": "torch"}]).write(tmp_path)
    ProfileManifest("raspberry-pi-5", []).write(tmp_path)
    assert artifacts.read_json(tmp_path / "profiles" / "host.json") == {
        "target": "host", "records": [{"engine": "student", "backend": "torch"}]}
    assert ProfileManifest.read(tmp_path, "host").records == [{"engine": "student", "backend": "torch"}]
    assert [p.stem for p in RunDir(tmp_path).profile_files()] == ["host", "raspberry-pi-5"]
