"""Per-layer times named by the model's own layers: ONNX node/tensor → PyTorch module path.

torch.onnx (dynamo) records each node's module scopes in its `pkg.torch.onnx.name_scopes`
metadata (the TorchScript exporter in node names such as `/layer1/layer1.0/conv1/Conv`).
onnxslim and the runtimes drop or rename that: ONNX Runtime profiles a fused NCHWc kernel
under its output tensor's name plus `_nchwc` (`relu_3_nchwc`), OpenVINO under a node or
tensor name. So the exporter stores one map (node and tensor names → module path) in the
model's metadata under MODULES_KEY, and a backend resolves its profiler's names through it.
"""
from __future__ import annotations

import ast
import json
import logging
import re
from typing import Any

from edgeft.targets.graph import FUSED

log = logging.getLogger(__name__)

MODULES_KEY = "edgeft.modules"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# What runtimes and the QDQ quantizer add to the node or tensor name a kernel is profiled under
# (ORT: layout pass `_nchwc`, copies `_token_N`, fp16 fallback `InsertedPrecisionFreeCast_`; QDQ: `_bias`;
# OpenVINO: a Conv split from its bias `/WithoutBiases`, INT8 rescaling `/DequantizationMultiply`).
SUFFIXES = ("_nchwc", r"_token_\d+", "_bias", "_QuantizeLinear", "_DequantizeLinear", "/duplicated", "/WithoutBiases",
            "/DequantizationMultiply")
ADDED = re.compile(rf"^(InsertedPrecisionFreeCast_)+|({'|'.join(SUFFIXES)})+$")


def module_map(graph: Any) -> dict[str, str]:
    """Node, output-tensor and parameter names of an ONNX graph → module path of the PyTorch layer that made them.

    An activation or batch norm that runtimes fuse into its producer (targets.graph.FUSED)
    gives its output tensor the producer's module, so a fused Conv+ReLU kernel named after
    the ReLU's output is named by the Conv's module. A node with a parameter (`conv1.weight`)
    is named by that parameter's module: a Conv with its BatchNorm folded in by the exporter
    keeps the Conv's name, where its name scope is the BatchNorm's.
    """
    weights = {t.name for t in graph.initializer}
    # a parameter's own name too: INT8 engines run its DequantizeLinear as a kernel
    paths = {name: name.rsplit(".", 1)[0] for name in weights if name.endswith((".weight", ".bias"))}
    for node in graph.node:
        param = next((i for i in node.input[1:] if i in weights and i.endswith(".weight")), None)
        own = param[: -len(".weight")] if param else _scope_path(node)
        if own:
            paths[node.name] = own
        fused_into = paths.get(node.input[0]) if node.op_type in FUSED and node.input else None
        for tensor in node.output:
            if fused_into or own:
                paths[tensor] = fused_into or own
    return paths


def _scope_path(node: Any) -> str | None:
    """The deepest module scope of a node: dynamo's name-scope metadata, else a TorchScript node name."""
    meta = {p.key: p.value for p in node.metadata_props}
    if SCOPES_KEY in meta:
        try:
            scopes = [s for s in ast.literal_eval(meta[SCOPES_KEY]) if s][:-1]  # the last one is the aten op
        except (ValueError, SyntaxError):
            return None
        return scopes[-1] if scopes else None
    if node.name.startswith("/"):  # TorchScript: /layer1/layer1.0/conv1/Conv (parts relative or qualified)
        path = ""
        for part in node.name.strip("/").split("/")[:-1]:
            path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
        return path or None
    return None


def parse_modules(meta: dict[str, str]) -> dict[str, str]:
    """The stored map from an engine's metadata ({} when the engine has none or it is unreadable)."""
    try:
        modules = json.loads(meta.get(MODULES_KEY, "{}"))
    except json.JSONDecodeError:
        log.warning("metadata %r is not JSON; per-layer times keep the engine's names", MODULES_KEY)
        return {}
    return modules if isinstance(modules, dict) else {}


def module_of(name: str, modules: dict[str, str]) -> str | None:
    """The module path of a profiled kernel name: as given, then without the runtime's suffixes."""
    return modules.get(name) or modules.get(ADDED.sub("", name))


def with_modules(layers: list[dict] | None, modules: dict[str, str]) -> list[dict] | None:
    """Per-layer rows [{name, op, ms}] with "module" added where the map knows the kernel."""
    if layers is None:
        return None
    return [{**layer, "module": module_of(layer["name"], modules)} for layer in layers]
