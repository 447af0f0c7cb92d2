"""The training loop: exact resume after a kill, DDP on 2 CPU processes, schedules."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from edgeft.compress.train import TrainSpec, make_schedule
from tests.conftest import tiny_args, write_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def compress(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgeft", *args], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def without_timing(path) -> dict:
    summary = json.loads(path.read_text())
    summary.pop("seconds")
    return summary


def test_killed_run_resumes_to_the_same_result(tmp_path):
    data = write_folder(tmp_path / "data", per_class=24, size=32)
    args = tiny_args(data, tmp_path / "full", "--method", "stl", "--epochs", "6", "--image-size", "32")
    compress(*args)

    killed = tmp_path / "killed"
    args_killed = tiny_args(data, killed, "--method", "stl", "--epochs", "6", "--image-size", "32")
    proc = subprocess.Popen([sys.executable, "-m", "edgeft", *args_killed], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "finetune" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (killed / "summary.json").exists(), "the run was not killed mid-training"

    compress(*args_killed, "--resume")
    assert without_timing(killed / "summary.json") == without_timing(tmp_path / "full" / "summary.json")
    resumed = load_file(str(killed / "student" / "model.safetensors"))
    full = load_file(str(tmp_path / "full" / "student" / "model.safetensors"))
    assert resumed.keys() == full.keys()
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["stage"] == "finetune"]
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_ddp_on_two_cpu_processes_shards_the_data(tmp_path, tiny_data):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgeft", *tiny_args(tiny_data, out, "--method", "stl", "--device", "cpu")]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    finetune = [r for r in rows if r["stage"] == "finetune"]
    assert [r["steps"] for r in finetune] == [2, 2]  # 24 images / 2 ranks / batch 8; one process takes 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train_images"] == 24
    assert (out / "student" / "model.safetensors").exists()


@pytest.mark.parametrize("schedule,expected", [("cosine", [1.0, 0.5, 0.0]), ("multistep", [1.0, 0.1, 0.01]),
                                               ("constant", [1.0, 1.0, 1.0])])
def test_schedules(schedule, expected):
    factor = make_schedule(TrainSpec(epochs=1, lr=1.0, schedule=schedule, milestones=(0.5, 0.75)), 100)
    assert [round(factor(s), 6) for s in (0, 50, 100)] == expected
