"""A frozen teacher's outputs over a fixed image set, computed through edgeft's own runtimes.

A foundation teacher at its own resolution is the dearest part of a transfer run on a CPU
(EfficientNet-Lite2 at 260 px: ~6 img/s in eager PyTorch, ~27 in ONNX Runtime, ~50 in OpenVINO
on 2 cores). Where a method's teacher inputs are fixed (AFT features, probe features, KD targets
of the eval view), the teacher is exported once to ONNX — resize and normalisation included —
checked against PyTorch on the first batch, and run by the fastest installed CPU runtime
(OpenVINO, else ONNX Runtime). PyTorch itself is the fallback (GPU runs, no runtime installed,
an export or check that fails), so results never depend on a runtime being present.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgeft.errors import EdgeftError

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "onnxruntime")  # fastest first on x86 CPUs (measured: ~50 vs ~27 img/s, Lite2 260 px)
CHECK_ATOL = 1e-3  # fp32 runtime vs PyTorch on the teacher's pooled features / logits
OPSET = 17


class _Output(nn.Module):
    """`fn(model, x)` as a module, so that one of the teacher's outputs can be exported."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


@torch.no_grad()
def frozen_outputs(model: nn.Module, loader: DataLoader, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                   device: torch.device) -> torch.Tensor:
    """`fn(model, images)` over every batch of `loader`, concatenated in order (float32, on the CPU)."""
    was_training = model.training
    model.eval()
    try:
        if device.type == "cpu":
            outputs = _through_runtime(_Output(model, fn), loader)
            if outputs is not None:
                return outputs
        return torch.cat([fn(model, images.to(device)).float().cpu() for images, _ in loader])
    finally:
        model.train(was_training)


def _through_runtime(module: nn.Module, loader: DataLoader) -> torch.Tensor | None:
    """The outputs through OpenVINO / ONNX Runtime, or None (logged) when neither can take the model."""
    from edgeft.runtime import BACKENDS

    first = next(iter(loader), None)
    if first is None:
        return torch.zeros(0)
    images = first[0]
    expected = module(images).float()
    names = [n for n in RUNTIMES if BACKENDS.get(n).available()]
    if not names:
        return None
    with tempfile.TemporaryDirectory(prefix="edgeft-teacher-") as tmp:
        path = Path(tmp) / "teacher.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # every shape but the batch is fixed
                torch.onnx.export(module, (images,), str(path), input_names=["images"], output_names=["out"],
                                  dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}}, opset_version=OPSET,
                                  dynamo=False)
        except Exception as exc:  # noqa: BLE001 - any export failure means: use PyTorch
            log.info("teacher outputs in PyTorch: ONNX export failed (%s)", str(exc).splitlines()[0][:160])
            return None
        for name in names:
            try:
                with BACKENDS.get(name)(path) as engine:
                    got = torch.from_numpy(engine.infer(images.numpy()))
                    diff = (got - expected).abs().max().item()
                    if got.shape != expected.shape or diff > CHECK_ATOL * max(1.0, expected.abs().max().item()):
                        log.info("teacher outputs: %s differs from PyTorch by %.2e; trying the next", name, diff)
                        continue
                    log.info("teacher outputs through %s (max |Δ| vs PyTorch %.1e on the first batch)", name, diff)
                    rest = [torch.from_numpy(engine.infer(np.ascontiguousarray(b.numpy())))
                            for i, (b, _) in enumerate(loader) if i]
                    return torch.cat([got, *rest]).float()
            except EdgeftError as exc:  # the runtime cannot take this graph: the next one, else PyTorch
                log.info("teacher outputs: %s cannot run it (%s)", name, str(exc)[:160])
    return None
