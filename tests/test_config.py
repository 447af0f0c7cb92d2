from __future__ import annotations

import pytest

from edgeft.config import CompressConfig, build_config
from edgeft.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: kd\nteacher: [a, b]\nbatch-size: 16\n")
    cfg = build_config(CompressConfig, str(path), batch_size=None, seed=3)
    assert (cfg.method, cfg.teacher, cfg.batch_size, cfg.seed) == ("kd", ("a", "b"), 16, 3)


def test_unknown_yaml_key_names_the_file_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metod: kd\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'metod' \(did you mean 'method'"):
        build_config(CompressConfig, str(path))


def test_resolved_config_round_trips(tmp_path):
    cfg = CompressConfig(teacher=("demo",), classes=("cat", "dog"), fraction=0.1)
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert build_config(CompressConfig, str(path)) == cfg
