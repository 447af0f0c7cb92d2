"""The README's commands: every flag they use exists and parses, and the ones that run on a run directory
exit 0 (or their documented code) on a small trained run."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from tests.conftest import tiny_args

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = ("## Usage", "## Export, profile, targets, report")  # Guard rails sit inside the second


def readme_commands() -> list[str]:
    """`edgeft …` lines of the bash blocks of the Usage and Export/profile sections, comments removed."""
    text = README.read_text()
    commands = []
    for section in SECTIONS:
        body = text[text.index(section):]
        body = body[:body.index("\n## ", len(section))]
        for block in re.findall(r"```bash\n(.*?)```", body, re.S):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line.startswith("edgeft ") and "..." not in line:
                    commands.append(line)
    return commands


def parse(args: list[str]) -> click.Context:
    """Parses `edgeft COMMAND ARGS` as click would (flags, choices, types), without running the command."""
    name, *rest = args
    return cli.commands[name].make_context(name, rest, parent=click.Context(cli, info_name="edgeft"))


def test_the_readme_has_its_commands():
    commands = readme_commands()
    assert len(commands) >= 20 and any(c.startswith("edgeft card ") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    optional_given = re.sub(r"\[(--[^\]]+)\]", r"\1", command)  # `[--shard 0/4]`: an optional flag, given
    parse(shlex.split(optional_given)[1:])  # raises click.UsageError/BadParameter on a flag or value the CLI does not take


RUN_DIR_COMMANDS = [  # verbatim from the README, on `runs/demo`; (command, documented exit codes)
    ("edgeft export runs/demo --format onnx,openvino,tensorrt --precision fp32,fp16,int8 --calib 256", {0}),
    ("edgeft export runs/demo --format onnx,openvino", {0}),
    ("edgeft export runs/demo --precision int8 --max-drop 0.5", {0}),
    ("edgeft profile runs/demo --target jetson", {0}),
    ("edgeft profile runs/demo --target host --fail-if \"top1_drop>1.0 or p99_ms>8\"", {0, 3}),
    ("edgeft profile runs/demo --rebuild", {0}),
    ("edgeft report runs/demo", {0}),
    ("edgeft card runs/demo --target all", {0}),
    ("edgeft targets", {0}),
    ("edgeft methods", {0}),
]


@pytest.mark.slow
def test_readme_run_directory_commands_exit_as_documented(tmp_path, tiny_data, monkeypatch):
    readme = readme_commands()
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tiny_data, Path("runs/demo"), "--method", "stl")
    args[args.index("--image-size") + 1] = "32"  # OpenVINO cannot convert resnet10t's pooling at 16 px
    trained = CliRunner().invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    for command, codes in RUN_DIR_COMMANDS:
        assert command in readme, f"README no longer has: {command}"
        args = shlex.split(command)[1:]
        if args[0] == "profile":  # the README's measurement settings, shortened: same code paths
            args += ["--iterations", "3", "--seconds", "0.05", "--warmup", "1", "--max-batch", "2"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in codes, f"{command}: exit {result.exit_code}\n{result.output}"
    assert (tmp_path / "runs" / "demo" / "report.html").exists()
    assert list((tmp_path / "runs" / "demo" / "cards").glob("*.md"))
