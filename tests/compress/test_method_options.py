"""Methods own their options: declared once (an Options dataclass named in the registration), the CLI
and the config are built from those declarations."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.compress.methods import METHODS, MethodEntry
from edgeft.compress.methods.baselines import FineTune
from edgeft.compress.methods.options import AftOptions, NoOptions, option
from edgeft.config import CompressConfig, build_config
from edgeft.errors import ConfigError
from tests.conftest import tiny_args


@dataclass(frozen=True)
class EchoOptions:
    """echo options"""

    echo_gain: float = option(2.0, "how much louder the echo is")


class Echo(FineTune):
    """A throw-away method: fine-tuning that remembers its one option."""

    seen: list[float] = []

    def fit(self, ctx):
        Echo.seen.append(ctx.options.echo_gain)
        return super().fit(ctx)


@pytest.fixture
def echo_method():
    METHODS.add("echo", MethodEntry("fine-tune, and echo", f"{__name__}:Echo", options=EchoOptions))
    yield
    METHODS.remove("echo")


def test_a_new_method_with_one_option_is_its_file_and_registration(tmp_path, tiny_data, echo_method):
    help_text = CliRunner().invoke(cli, ["compress", "--help"]).output
    assert "echo options (echo):" in help_text and "--echo-gain FLOAT" in help_text
    assert "How much louder the echo is [2.0]." in help_text

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, tiny_args(tiny_data, out, "--method", "echo", "--echo-gain", "3.5"))
    assert result.exit_code == 0, result.output
    assert Echo.seen[-1] == 3.5
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "echo" and saved["echo_gain"] == 3.5
    assert "beta" not in saved  # another method's option is not this run's


def test_the_help_groups_each_methods_options():
    help_text = CliRunner().invoke(cli, ["compress", "--help"]).output
    aft = help_text.index("aft options (aft):")
    assert help_text.index("--beta", aft) < help_text.index("--aft-kernel", aft)
    assert "upstream pack (irf, digg, ota, digg-irf):" in help_text
    assert help_text.count("--pack TEXT") == 1  # shared by four methods, declared once


def test_yaml_keys_go_to_the_chosen_methods_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: aft\nteacher: [demo]\nbeta: '30'\naft_augment: false\n")
    cfg = build_config(CompressConfig, str(path))
    assert cfg.options == AftOptions(beta="30", aft_augment=False)
    assert build_config(CompressConfig, str(path)).to_dict()["beta"] == "30"
    assert CompressConfig(teacher=()).options == NoOptions()


def test_another_methods_option_is_refused_unless_at_its_default():
    with pytest.raises(ConfigError, match="--beta: an option of aft; --method kdep does not take it"):
        build_config(CompressConfig, method="kdep", beta="30")
    assert build_config(CompressConfig, method="kdep", beta="10").options.align == "svd"  # an old full config.yaml


def test_a_value_outside_the_declared_choices_names_the_flag():
    with pytest.raises(ConfigError, match="--align: unknown value 'pca'"):
        build_config(CompressConfig, method="kdep", align="pca")
