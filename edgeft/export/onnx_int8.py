"""ONNX Runtime's accuracy-bounded INT8 (`--max-drop`): its calibration tries and layer ranking.

Without a bound, INT8 is one MinMax calibration (quantize.quantize_onnx). With one, the
format-neutral search (int8_guard.bounded_int8) measures, in order:

1. ONNX Runtime's MinMax, Entropy and Percentile calibrators (the histogram ones on at most
   HISTOGRAM_IMAGES images; one that fails on the graph is skipped, MinMax failing fails INT8);
2. if none holds, a sensitivity pass (onnxruntime.quantization.qdq_loss_debug) runs the float and
   the Q/DQ graph of the best calibrator on a few calibration images and ranks each layer by how
   much signal-to-quantization-noise it loses from its inputs to its output; the top 1, 2, 4, …
   layers (at most int8_guard.max_kept) are excluded from quantization together with the
   activation path that feeds them (their input tensors lose their Q/DQ).

The graph is in the scheme the CPU runs fast (quantize.cpu_scheme); TensorRT's is symmetric
signed INT8, which its explicit quantization needs. The record says which (`scheme`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from edgeft.export.int8_guard import Try, bounded_int8, max_kept, unbounded
from edgeft.export.quantize import Int8Scheme, quantize_onnx
from edgeft.export.validate import Runner

if TYPE_CHECKING:
    from edgeft.export.base import ExportJob

log = logging.getLogger(__name__)

ORT_CALIBRATORS = ("minmax", "entropy", "percentile")
HISTOGRAM_IMAGES = 64  # entropy/percentile hold every activation of every image in memory
SENSITIVITY_IMAGES = 16
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_DQ_SUFFIX, _Q_INPUT_SUFFIX = "_DequantizeLinear_Output", "_QuantizeLinear_Input"


def quantize_onnx_bounded(job: "ExportJob", src: Path, dst: Path, input_name: str, scheme: Int8Scheme,
                          runner: Callable[[Path], Runner]) -> dict[str, Any]:
    """Writes the INT8 Q/DQ ONNX of `src` in `scheme` to `dst` within the job's --max-drop; returns how it was made.

    `runner` turns an ONNX file into a validation runner (the exporter's onnxruntime session).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = job.calibration()
    if job.max_drop is None:
        quantize_onnx(src, dst, calibration, input_name, scheme)
        return unbounded("minmax") | {"scheme": scheme.to_json()}
    candidates = _Candidates(dst.with_name(dst.stem + ".pre.onnx"), dst, calibration, input_name, scheme)
    quant_pre_process(str(src), str(candidates.prepared))
    try:
        tries = [Try(method, partial(candidates.build, method), skippable=method != "minmax")
                 for method in ORT_CALIBRATORS]
        chosen, record = bounded_int8(job, "onnxruntime", tries, runner, candidates.keep_float)
        os.replace(chosen, dst)
        return record | {"scheme": scheme.to_json()}
    finally:
        for path in (candidates.prepared, *dst.parent.glob(f"{dst.stem}.*-*.onnx")):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Candidates:
    """The Q/DQ candidates of one bounded search, each a file next to `dst` built from the prepared graph."""

    prepared: Path  # `src` after quant_pre_process, once for every candidate
    dst: Path
    calibration: np.ndarray
    input_name: str
    scheme: Int8Scheme

    def path(self, method: str, kept: int) -> Path:
        return self.dst.with_name(f"{self.dst.stem}.{method}-{kept}.onnx")

    def build(self, method: str, kept: Sequence[str] = (), exclude: frozenset[str] = frozenset()) -> Path:
        """Quantises with `method`, the nodes in `exclude` kept in float; the candidate's file."""
        path = self.path(method, len(kept))
        images = self.calibration if method == "minmax" else self.calibration[:HISTOGRAM_IMAGES]
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_onnx(self.prepared, path, images, self.input_name, self.scheme, method, sorted(exclude),
                          prepare=False)
        return path

    def keep_float(self, method: str) -> Iterator[Try[Path]]:
        """The top 1, 2, 4, … most sensitive layers of `method`'s graph kept in float, up to max_kept."""
        ranked = rank_layers(self.prepared, self.path(method, 0), self.calibration[:SENSITIVITY_IMAGES],
                             self.input_name)
        most, count = max_kept(len(ranked)), 1
        while True:
            count = min(count, most)
            kept = [name for name, _ in ranked[:count]]
            exclude = frozenset().union(*(group for _, group in ranked[:count]))
            yield Try(method, partial(self.build, method, kept, exclude), kept)
            if count == most:
                return
            count *= 2


def rank_layers(float_path: Path, qdq_path: Path, images: np.ndarray, input_name: str) -> list[tuple[str, set[str]]]:
    """Quantized layers, most sensitive first, each with the nodes to exclude to keep it in float.

    A layer's sensitivity is the signal-to-quantization-noise ratio (dB, float vs Q/DQ graph on
    the same images) it loses from its most accurate activation input to its output. Keeping it
    in float excludes it and the non-compute nodes feeding it up to the previous layers, which
    are excluded too: a tensor loses its Q/DQ only when no node next to it quantizes it.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qdq

    def activations(path: Path) -> dict[str, np.ndarray]:
        augmented = path.with_name(path.stem + ".debug.onnx")
        try:
            qdq.modify_model_output_intermediate_tensors(str(path), str(augmented))
            batches = qdq.collect_activations(str(augmented), _Reader(images, input_name))
        finally:
            augmented.unlink(missing_ok=True)
        return {name: np.concatenate(values) for name, values in batches.items()}

    floats, quantized = activations(float_path), activations(qdq_path)
    floats.setdefault(input_name, images.reshape(-1))
    graph = onnx.load_model(str(float_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    scores = []
    for node in onnx.load_model(str(qdq_path), load_external_data=False).graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        inputs = [qdq.compute_signal_to_quantization_noice_ratio(floats[_base(i)], quantized[i])
                  for i in node.input if _base(i) in floats and i in quantized]
        out, base = node.output[0], _base(node.output[0])
        if not inputs or base not in floats or out not in quantized:
            continue
        loss = min(max(inputs), 200.0) - qdq.compute_signal_to_quantization_noice_ratio(floats[base], quantized[out])
        scores.append((loss, node.name, _feeding(node.name, graph, producer)))
    scores.sort(key=lambda s: -s[0])
    log.info("onnxruntime int8 sensitivity (dB lost): %s",
             ", ".join(f"{name} {loss:.1f}" for loss, name, _ in scores[:5]))
    return [(name, group) for _, name, group in scores]


def _feeding(name: str, graph, producer: dict[str, Any]) -> set[str]:
    """`name` and the nodes on its activation inputs back to (and including) the previous compute nodes."""
    nodes = {n.name: n for n in graph.node}
    group, todo = {name}, list(nodes[name].input)
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in group:
            continue
        group.add(node.name)
        if node.op_type not in COMPUTE_OPS:
            todo.extend(node.input)
    return group


def _base(name: str) -> str:
    return name.removesuffix(_DQ_SUFFIX).removesuffix(_Q_INPUT_SUFFIX)


class _Reader:
    """Feeds images one by one (fits static and dynamic batch axes) as a calibration data reader."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._items = iter([{input_name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def __iter__(self):
        return iter(self.get_next, None)
