from __future__ import annotations

import pytest

from edgeft import artifacts
from edgeft.artifacts import StudentCard


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
