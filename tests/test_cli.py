"""The CLI: --help of every command, and one-line exit-2 errors for each bad input."""
from __future__ import annotations

import json
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


def test_unknown_head_init_is_one_line_error_and_writes_nothing(tmp_path, tiny_data):
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r", "--head-init", "bogus")), "--head-init bogus", "zero")
    assert not (tmp_path / "r").exists()


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


HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "nncf", "matplotlib")
# `python -m edgeft ARGS` with the heavy stack made unimportable: an option error or a listing that
# still imports one of them ends in an ImportError traceback (exit 1) instead of its answer.
WITHOUT_HEAVY = ("import runpy, sys\n"
                 f"for name in {HEAVY!r}:\n"
                 "    sys.modules[name] = None\n"
                 "sys.argv[0] = 'edgeft'\n"
                 "runpy.run_module('edgeft', run_name='__main__')\n")


@pytest.mark.parametrize("args, code, needle", [
    (["--help"], 0, "Usage:"),
    (["methods"], 0, "digg-irf"),
    (["targets"], 0, "jetson-orin-nano-8gb"),
    (["compress", "--bogus"], 2, "No such option '--bogus'"),
    (["compress", "--method", "nosuch"], 2, "--method nosuch: unknown method"),
    (["compress", "--fail-if", "top1_drop>>1"], 2, "--fail-if"),
    (["compress", "--fail-if", "nosuch>1"], 2, "unknown metric 'nosuch'"),
    (["compress", "--target", "nosuch"], 2, "--target nosuch: unknown target"),
    (["export", "runs/x", "--fail-if", "top1_drop>"], 2, "--fail-if"),
    (["profile", "x.onnx", "--fail-if", "p50_ms<<1"], 2, "--fail-if"),
])
def test_option_errors_and_listings_answer_without_the_heavy_imports(args, code, needle):
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HEAVY, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert needle in proc.stdout + proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_methods_lists_every_registered_method_with_its_summary():
    from edgeft.compress.methods import METHODS

    result = CliRunner().invoke(cli, ["methods"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name in METHODS.names():
        assert f" {name} " in result.output and METHODS.get(name).summary in result.output


def test_a_text_file_as_teacher_weights_says_what_it_is_not(tmp_path, tiny_data):
    notes = tmp_path / "weights.pth"
    notes.write_text("these are not weights\n")
    args = tiny_args(tiny_data, tmp_path / "r")
    args[args.index("--teacher-weights") + 1] = str(notes)
    one_line_error(run(args), f"--teacher-weights {notes}: not a weights file",
                   "expected .safetensors, a torch .pth/.pt state dict or a BiT .npz")


def test_unknown_teacher_names_the_offline_teachers(tmp_path, tiny_data):
    args = tiny_args(tiny_data, tmp_path / "r")
    args[args.index("resnet10t")] = "no_such_net"
    one_line_error(run(args), "--teacher no_such_net: unknown model", "'demo'", "tf_efficientnet_lite0")


def test_ctrl_c_during_training_says_how_to_resume_and_the_seconds_add_up(tmp_path, tiny_data, monkeypatch):
    from edgeft.compress.train import Trainer

    out = tmp_path / "r"
    train_epoch, calls = Trainer._train_epoch, []

    def interrupted_in_epoch_2(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted_in_epoch_2)
    result = run(tiny_args(tiny_data, out, "--method", "stl"))
    assert result.exit_code == 130, result.output
    (line,) = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert f"edgeft compress --out {out} --resume" in line
    assert not (out / "summary.json").exists() and (out / "checkpoints" / "finetune" / "last.pt").exists()
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    (out / "checkpoints" / "elapsed.json").write_text('{"seconds": 1000.0}')  # the first session "took" 1000 s
    began = time.time()
    result = run(["compress", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    seconds = json.loads((out / "summary.json").read_text())["seconds"]
    assert 1000 < seconds <= 1000 + time.time() - began + 0.1
    assert not (out / "checkpoints" / "elapsed.json").exists()


def test_a_killed_run_counts_its_time_up_to_its_last_checkpoint_when_resumed(tmp_path, tiny_data, monkeypatch):
    from edgeft.compress.train import Trainer

    out = tmp_path / "r"
    train_epoch, calls = Trainer._train_epoch, []

    def killed_in_epoch_2(self, *args):  # no Ctrl-C handler runs: the process dies (SIGKILL, a lost machine)
        calls.append(1)
        if len(calls) == 2:
            raise SystemExit(137)
        return train_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_2)
    assert run(tiny_args(tiny_data, out, "--method", "stl")).exit_code == 137
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    tally_file = out / "checkpoints" / "elapsed.json"
    tally = json.loads(tally_file.read_text())
    last_checkpoint = (out / "checkpoints" / "finetune" / "last.pt").stat().st_mtime
    # the killed session "began" 600 s before its last checkpoint, after 40 s of an earlier session
    tally_file.write_text(json.dumps({**tally, "seconds": 40.0, "since": last_checkpoint - 600}))
    began = time.time()
    assert run(["compress", "--out", str(out), "--resume"]).exit_code == 0
    seconds = json.loads((out / "summary.json").read_text())["seconds"]
    assert 640 <= seconds <= 640 + time.time() - began + 0.1
    assert not tally_file.exists()


def test_resuming_a_finished_run_keeps_its_total_seconds(tmp_path, tiny_data):
    out = tmp_path / "r"
    assert run(tiny_args(tiny_data, out, "--method", "lp")).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "seconds": 349.4}))
    began = time.time()
    assert run(["compress", "--out", str(out), "--resume"]).exit_code == 0
    assert 349.4 < json.loads((out / "summary.json").read_text())["seconds"] <= 349.5 + time.time() - began


def test_data_split_lists_the_images_used_and_the_skipped_ones(tmp_path, tiny_data):
    bad = tiny_data / "train" / "red" / "0003.png"
    bad.write_bytes(b"not a png")  # 1 of 24 training images: skipped (under the 5% refusal bound)
    out = tmp_path / "r"
    result = run(tiny_args(tiny_data, out, "--method", "lp"))
    assert result.exit_code == 0, result.output
    split = json.loads((out / "data_split.json").read_text())
    assert not any(path.endswith("red/0003.png") for path in split["train"]) and len(split["train"]) == 23
    (skipped,) = split["skipped"]
    assert skipped["file"].endswith("train/red/0003.png") and skipped["reason"]


def test_targets_table_fits_80_columns_with_every_name_and_source():
    from edgeft.targets import TARGETS

    result = CliRunner().invoke(cli, ["targets"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    words = set(result.output.replace("│", " ").split())
    flat = " ".join(result.output.split())  # sources may wrap over lines
    for t in (TARGETS.get(n) for n in TARGETS.names()):
        assert {t.name, *t.aliases} <= words, t.name
        for figure in [*t.peak.values(), t.memory_bandwidth, t.ram]:
            if figure:
                assert " ".join(figure.source.split()) in flat, figure.source


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_progress():
    import io

    from rich.console import Console

    from edgeft.console import RichProgress

    stream, clock = io.StringIO(), FakeClock()
    return RichProgress(Console(file=stream, width=200), clock=clock), stream, clock


def test_progress_into_a_log_prints_a_line_every_tenth_with_loss_and_eta():
    progress, stream, clock = plain_progress()
    progress.start("kd", 100)
    for _ in range(100):
        clock.now += 1.0
        progress.advance(1, loss=0.5)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "stage kd: 10/100 (10%), loss 0.5000, 10 s elapsed, ETA 1:30"
    assert lines[-1] == "stage kd: 100/100 (100%), loss 0.5000, 100 s elapsed"
    progress.start("probe", 100)  # a stage of seconds: its end line only
    for _ in range(100):
        clock.now += 0.01
        progress.advance(1, loss=0.25)
    progress.finish()
    assert stream.getvalue().splitlines()[10:] == ["stage probe: 100/100 (100%), loss 0.2500, 1 s elapsed"]


def test_progress_into_a_log_prints_every_30_s_and_where_an_unfinished_stage_ended():
    progress, stream, clock = plain_progress()
    progress.start("finetune", 1000)
    progress.advance(500)  # a resumed stage's finished epochs: not timed
    for _ in range(3):
        clock.now += 31.0
        progress.advance(1, loss=1.0, acc=0.25)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "stage finetune: 501/1000 (50%), loss 1.0000, acc 0.2500, 31 s elapsed, ETA 4:17:49"
    assert len(lines) == 3 and lines[-1].startswith("stage finetune: 503/1000 (50%)")


def test_compress_into_a_log_shows_plain_progress_lines(tmp_path, tiny_data):
    result = run(tiny_args(tiny_data, tmp_path / "r", "--method", "stl"))
    assert result.exit_code == 0, result.output
    assert "stage finetune: 6/6 (100%), loss " in result.stderr


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


@pytest.mark.parametrize("flag", ["--image-size", "--teacher-image-size"])
def test_an_impossible_image_size_names_its_flag(tmp_path, tiny_data, flag):
    one_line_error(run(tiny_args(tiny_data, tmp_path / "r", flag, "-5")), f"{flag} -5: must be at least 8 pixels")
    assert not (tmp_path / "r").exists()
