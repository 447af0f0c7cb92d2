"""pyproject.toml: the README's host usage needs no extra; GPU parts stay extras; old extra names still resolve."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_default_install_runs_export_profile_and_report():
    default = _names(PROJECT["dependencies"])
    assert {"onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxslim", "openvino", "nncf", "matplotlib"} <= default
    assert not {"tensorrt", "cuda-python", "cuda-bindings"} & default


def test_gpu_parts_are_extras_and_former_extras_still_resolve():
    extras = PROJECT["optional-dependencies"]
    assert {"tensorrt", "cuda-python"} <= _names(extras["tensorrt"]) and _names(extras["cuda"]) == {"cuda-bindings"}
    assert {"report", "runtime", "export", "openvino"} <= set(extras)  # `pip install 'edgeft[report]'` keeps working
