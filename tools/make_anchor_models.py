"""Writes edgeft/targets/anchor_models.json: per-layer costs of the models behind the public anchors.

The estimator fits each target's efficiency to published latencies (targets/devices/*.yaml);
it needs those models' graphs, which a device without torch cannot build. This tool exports
them once (timm, random weights — costs depend on the graph only) at batch 1, 224 px:

    python tools/make_anchor_models.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, dump_json  # noqa: E402

MODELS = ("resnet18", "resnet50", "mobilenetv3_large_100", "mobilenetv2_100")
OUT = ROOT / "edgeft" / "targets" / "anchor_models.json"


def export_onnx(name: str, path: Path, image_size: int = 224) -> Path:
    """timm model with random weights → ONNX (opset 17, dynamic batch)."""
    import timm
    import torch

    model = timm.create_model(name, pretrained=False, exportable=True).eval()
    torch.onnx.export(model, torch.randn(1, 3, image_size, image_size), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def main() -> None:
    from edgeft.targets.graph import graph_costs

    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            layers = graph_costs(export_onnx(name, Path(tmp) / f"{name}.onnx"))
            models[name] = {"image_size": 224, "gflops": round(sum(c.flops for c in layers) / 1e9, 3),
                            "layers": [c.to_row() for c in layers]}
            print(f"{name}: {len(layers)} kernels, {models[name]['gflops']} GFLOPs")
    dump_json(OUT, {"made_by": "tools/make_anchor_models.py", "batch": 1, "models": models})


if __name__ == "__main__":
    main()
