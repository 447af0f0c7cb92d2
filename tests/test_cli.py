"""The CLI: --help of every command, and one-line exit-2 errors for each bad input."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from tests.conftest import tiny_args, write_folder


def run(args: list[str]):
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command):
    result = run([command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_path(tmp_path):
    one_line_error(run(tiny_args(tmp_path / "nope", tmp_path / "r")), "--data", "no such file")


def test_empty_class_folder(tmp_path, tiny_data):
    (tiny_data / "train" / "empty").mkdir()
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r")), "empty", "has no images")


def test_corrupt_images_above_five_percent(tmp_path, tiny_data):
    for i in range(3):
        (tiny_data / "train" / "red" / f"bad{i}.jpg").write_bytes(b"junk")
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r")), "corrupt or not images")


def test_single_class(tmp_path):
    root = tmp_path / "one"
    write_folder(root, 4, layout="flat")
    for name in ("green", "blue"):
        for f in (root / name).iterdir():
            f.unlink()
        (root / name).rmdir()
    one_line_error(run(tiny_args(root, tmp_path / "r")), "at least 2")


def test_fraction_leaving_a_class_empty(tmp_path, tiny_data):
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r", "--fraction", "0.01")), "--fraction 0.01")


def test_unknown_teacher_suggests(tmp_path, tiny_data):
    args = tiny_args(tiny_data, tmp_path / "r")
    args[args.index("resnet10t")] = "resnet10tt"
    one_line_error(run(args), "unknown model", "did you mean 'resnet10t'")


def test_unknown_method_suggests(tmp_path, tiny_data):
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r", "--method", "stll")), "did you mean 'stl'")


def test_bad_config_key(tmp_path, tiny_data):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r", "--config", str(path))), "c.yaml", "'epochs'")


def test_resume_with_other_classes_is_refused(tmp_path, tiny_data):
    out = tmp_path / "r"
    assert run(tiny_args(tiny_data, out, "--method", "lp")).exit_code == 0
    other = write_folder(tmp_path / "other", 4)
    (other / "train" / "red").rename(other / "train" / "rose")
    (other / "val" / "red").rename(other / "val" / "rose")
    one_line_error(run(tiny_args(other, out, "--method", "lp", "--resume")), "--data")
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace(str(tiny_data), str(other)))
    one_line_error(run(["compress", "--out", str(out), "--resume"]), "trained on classes")


def test_existing_run_is_not_overwritten(tmp_path, tiny_data):
    out = tmp_path / "r"
    assert run(tiny_args(tiny_data, out, "--method", "lp")).exit_code == 0
    before = (out / "summary.json").read_bytes()
    one_line_error(run(tiny_args(tiny_data, out, "--method", "lp")), "--resume")
    assert (out / "summary.json").read_bytes() == before


def test_offline_bit_teacher_exits_2_fast_naming_the_flag(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    began = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeft", "compress", "--teacher", "bit_m_r50x1", "--data", "demo",
         "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True,
    )
    elapsed = time.time() - began
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--teacher-weights" in lines[0]
    # no hub retries: the CLI answers in seconds; the bound is loose because interpreter + torch import
    # alone take up to a minute on a loaded 2-core machine
    assert elapsed < 120
    assert not (tmp_path / "x" / "summary.json").exists()


def test_a_missing_extra_prints_its_install_command_literally(tmp_path, monkeypatch):
    from edgeft.runtime.tensorrt import TensorRtEngine

    monkeypatch.setattr(TensorRtEngine, "available", classmethod(lambda cls: False))
    (tmp_path / "model.engine").write_bytes(b"plan")
    result = run(["profile", str(tmp_path / "model.engine"), "--backend", "tensorrt"])
    one_line_error(result, "tensorrt is not installed", "pip install 'edgeft[tensorrt]'")


def test_error_messages_are_printed_without_rich_markup(tmp_path, monkeypatch):
    import edgeft.export
    from edgeft.errors import EdgeftError

    def fail(*args, **kwargs):
        raise EdgeftError("needs [bold]x[/bold] and pip install 'edgeft[cuda]'")

    monkeypatch.setattr(edgeft.export, "export_run", fail)
    one_line_error(run(["export", str(tmp_path)]), "needs [bold]x[/bold] and pip install 'edgeft[cuda]'")
