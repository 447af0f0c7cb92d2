"""Per-layer times named by the PyTorch module paths (edgeft.runtime.layers)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from edgeft.artifacts import StudentCard
from edgeft.export.onnx import export_onnx
from edgeft.runtime import EngineOptions, load
from edgeft.runtime.layers import module_map, module_of, with_modules


class Tiny(torch.nn.Module):
    """Conv+BN+ReLU stem, a Conv+ReLU block and a linear head: the fusions runtimes make."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(OrderedDict(
            conv=torch.nn.Conv2d(3, 8, 3, padding=1), bn=torch.nn.BatchNorm2d(8), act=torch.nn.ReLU()))
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = StudentCard(arch="tiny", num_classes=3, class_names=["a", "b", "c"], input_size=(3, 16, 16),
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), teacher="none", method="stl")
    return export_onnx(Tiny().eval(), card, tmp_path_factory.mktemp("layers") / "tiny.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_profiled_kernels_are_named_by_module_path(tiny_export: Path, backend: str) -> None:
    with load(tiny_export, backend, EngineOptions(threads=1)) as engine:
        layers = engine.layer_times(engine.input_spec.example(1), 2)
    convs = {layer["module"] for layer in layers if layer["op"].startswith(("Conv", "Convolution"))}
    # the stem's Conv carries its BatchNorm and ReLU, yet is named by the Conv module
    assert convs == {"stem.conv", "block.0"}
    assert "head" in {layer["module"] for layer in layers}


def test_the_map_survives_onnxslim_in_the_file(tiny_export: Path) -> None:
    stored = {p.key: p.value for p in onnx.load(str(tiny_export)).metadata_props}
    assert '"stem.conv"' in stored["edgeft.modules"]


def test_torchscript_node_names_give_module_paths() -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="/layer1/layer1.0/conv1/Conv"),
         helper.make_node("Relu", ["c"], ["r"], name="/layer1/layer1.0/relu/Relu"),
         helper.make_node("Gemm", ["r", "w2"], ["y"], name="/head/fc/Gemm"),
         helper.make_node("Identity", ["y"], ["z"], name="Identity_7")],
        "g", [], [], [helper.make_tensor("layer1.0.conv1.weight", onnx.TensorProto.FLOAT, [1], [1.0])])
    paths = module_map(graph)
    assert paths["layer1.0.conv1.weight"] == "layer1.0.conv1"
    assert paths["/layer1/layer1.0/conv1/Conv"] == "layer1.0.conv1" and paths["/head/fc/Gemm"] == "head.fc"
    assert paths["r"] == "layer1.0.conv1"  # a ReLU's output belongs to the Conv it is fused into
    assert "Identity_7" not in paths


def test_runtime_suffixes_are_stripped_and_unknown_kernels_keep_their_name() -> None:
    modules = {"relu_3": "layer1.0.conv1", "node_Conv_9": "fc"}
    assert module_of("relu_3_nchwc", modules) == "layer1.0.conv1"
    assert module_of("InsertedPrecisionFreeCast_relu_3_nchwc", modules) == "layer1.0.conv1"
    assert module_of("node_Conv_9_token_12", modules) == module_of("node_Conv_9/WithoutBiases", modules) == "fc"
    assert module_of("relu_3_QuantizeLinear", modules) == module_of("relu_3_DequantizeLinear/duplicated", modules)
    assert module_of("relu_3_QuantizeLinear", modules) == "layer1.0.conv1"
    assert module_of("fc.weight_bias_DequantizeLinear", {"fc.weight": "fc"}) == "fc"
    rows = with_modules([{"name": "ReorderOutput", "op": "ReorderOutput", "ms": 0.1}], modules)
    assert rows == [{"name": "ReorderOutput", "op": "ReorderOutput", "ms": 0.1, "module": None}]
