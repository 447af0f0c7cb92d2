"""Accuracy-bounded INT8 (`--max-drop POINTS`): other calibrators, then layers kept in float, else refusal.

Without a bound, INT8 is one MinMax (ONNX Runtime) or default (NNCF) calibration, as
before. With one, every candidate is measured on the run's held-out reference images
against PyTorch (validate.compare) with the INT8 tolerance whose accuracy limit is the
bound, and the first that holds is kept:

1. each calibrator the backend has: ONNX Runtime MinMax, Entropy, Percentile; NNCF's
   default (mean of per-image min/max) and mean-quantile activation ranges;
2. if none holds, the most sensitive layers stay in float. ONNX Runtime: a sensitivity pass
   (onnxruntime.quantization.qdq_loss_debug) runs the float and the Q/DQ graph on a few
   calibration images and ranks each layer by how much signal-to-quantization-noise it loses
   from its inputs to its output; the top 1, 2, 4, … layers are excluded from quantization
   together with the activation path that feeds them (their input tensors lose their Q/DQ).
   OpenVINO: NNCF's own quantize_with_accuracy_control, which ranks and reverts the same way;
3. if KEPT_SHARE of the layers in float still breaks the bound, INT8 is refused with the
   best measured drop (a RefusedError naming --max-drop; the export goes on with the other engines).

The outcome (calibrator, kept layers, drop, every try, the Q/DQ scheme) goes into the engine's
ExportRecord. The ONNX Runtime graph is in the scheme the CPU runs fast (quantize.cpu_scheme);
TensorRT's is symmetric signed INT8, which its explicit quantization needs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgeft.errors import ConfigError, RefusedError
from edgeft.export.quantize import Int8Scheme, quantize_onnx
from edgeft.export.validate import DEFAULT_TOLERANCES, Runner, compare

if TYPE_CHECKING:
    from edgeft.export.base import ExportJob

log = logging.getLogger(__name__)

ORT_CALIBRATORS = ("minmax", "entropy", "percentile")
HISTOGRAM_IMAGES = 64  # entropy/percentile hold every activation of every image in memory
SENSITIVITY_IMAGES = 16
KEPT_SHARE = 0.25  # at most this share of the quantized layers stays in float before INT8 is refused
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
OV_COMPUTE_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
_DQ_SUFFIX, _Q_INPUT_SUFFIX = "_DequantizeLinear_Output", "_QuantizeLinear_Input"


def check_max_drop(max_drop: float | None) -> None:
    if max_drop is not None and not (max_drop >= 0 and math.isfinite(max_drop)):
        raise ConfigError(f"--max-drop {max_drop}: give the accuracy points INT8 may lose, a number >= 0 (e.g. 1.0)")


def max_kept(layers: int) -> int:
    return max(1, int(layers * KEPT_SHARE))


@dataclass
class Search:
    """Every INT8 candidate of one backend, measured on the job's reference images."""

    job: "ExportJob"
    backend: str
    tried: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, runner: Runner, calibrator: str, kept: list[str]) -> bool:
        """Records the candidate's accuracy drop; True when it passes the bounded INT8 tolerance."""
        figures = compare(runner, self.job.reference, self.job.card)
        failures = figures.failures(self.job.tolerance(DEFAULT_TOLERANCES["int8"], "int8"))
        drop = round((figures.reference_accuracy - figures.accuracy) * 100, 3)
        self.tried.append({"calibrator": calibrator, "kept": len(kept), "drop_points": drop, "passed": not failures,
                           "failures": failures})
        log.info("%s int8 %s, %d layers in float: %.2f points below PyTorch%s", self.backend, calibrator,
                 len(kept), drop, "" if not failures else f" ({'; '.join(failures)})")
        return not failures

    def best(self) -> dict[str, Any]:
        measured = [t for t in self.tried if t["drop_points"] is not None]
        return min(measured, key=lambda t: (not t["passed"], len(t["failures"]), t["drop_points"]))

    def record(self, calibrator: str, kept: list[str]) -> dict[str, Any]:
        return {"calibrator": calibrator, "kept_layers": kept, "drop_points": self.tried[-1]["drop_points"],
                "max_drop": self.job.max_drop, "tried": [{k: t[k] for k in ("calibrator", "kept", "drop_points")}
                                                         | ({"error": t["failures"][0]} if t["drop_points"] is None else {})
                                                         for t in self.tried]}

    def refuse(self) -> None:
        best = self.best()
        extra = f" (failing: {'; '.join(best['failures'])})" if best["failures"] else ""
        raise RefusedError(
            f"--max-drop {self.job.max_drop:g}: {self.backend} INT8 cannot hold it: the best of {len(self.tried)} "
            f"tries ({best['calibrator']} calibration, {best['kept']} layers kept in float) is "
            f"{best['drop_points']:.2f} points below PyTorch on {len(self.job.reference.labels)} held-out images"
            f"{extra}; raise --max-drop or export fp16"
        )


def describe(quantization: dict[str, Any] | None) -> str:
    """One line for the CLI: what the bounded INT8 search chose."""
    if not quantization or quantization.get("max_drop") is None:
        return ""
    kept = quantization["kept_layers"]
    layers = f"{len(kept)} layers kept in float ({', '.join(kept[:3])}{', …' if len(kept) > 3 else ''})" \
        if kept else "no layer kept in float"
    return (f"{quantization['calibrator']} calibration, {layers}: {quantization['drop_points']:.2f} points below "
            f"PyTorch (--max-drop {quantization['max_drop']:g}; {len(quantization['tried'])} tries)")


# ---------------------------------------------------------------------------------------- ONNX Runtime


def quantize_onnx_bounded(job: "ExportJob", src: Path, dst: Path, input_name: str,
                          scheme: Int8Scheme) -> dict[str, Any]:
    """Writes the INT8 Q/DQ ONNX of `src` in `scheme` to `dst` within the job's --max-drop; returns how it was made."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeft.export.onnx import ort_runner

    calibration = job.calibration()
    if job.max_drop is None:
        quantize_onnx(src, dst, calibration, input_name, scheme)
        return {"calibrator": "minmax", "kept_layers": [], "max_drop": None, "scheme": scheme.to_json()}
    search = Search(job, "onnxruntime")
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(prepared))
    candidates: dict[str, Path] = {}

    def attempt(method: str, kept: list[str], exclude: set[str]) -> bool:
        path = dst.with_name(f"{dst.stem}.{method}-{len(kept)}.onnx")
        images = calibration if method == "minmax" else calibration[:HISTOGRAM_IMAGES]
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_onnx(prepared, path, images, input_name, scheme, method, sorted(exclude), prepare=False)
        candidates.setdefault(method, path)
        if not search.measure(ort_runner(path), method, kept):
            return False
        os.replace(path, dst)
        return True

    try:
        for method in ORT_CALIBRATORS:
            try:
                if attempt(method, [], set()):
                    return search.record(method, []) | {"scheme": scheme.to_json()}
            except Exception as exc:  # noqa: BLE001 - a calibrator that fails on this graph is skipped
                if method == "minmax":
                    raise
                log.warning("onnxruntime %s calibration failed on this model (%s); skipped", method, exc)
                search.tried.append({"calibrator": method, "kept": 0, "drop_points": None, "passed": False,
                                     "failures": [f"calibration failed: {str(exc)[:120]}"]})
        method = search.best()["calibrator"]
        ranked = rank_layers(prepared, candidates[method], calibration[:SENSITIVITY_IMAGES], input_name)
        count = 1
        while True:
            count = min(count, max_kept(len(ranked)))
            kept = [name for name, _ in ranked[:count]]
            if attempt(method, kept, set().union(*(group for _, group in ranked[:count]))):
                return search.record(method, kept) | {"scheme": scheme.to_json()}
            if count == max_kept(len(ranked)):
                search.refuse()
            count *= 2
    finally:
        for path in (prepared, *dst.parent.glob(f"{dst.stem}.*-*.onnx")):
            path.unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------------------- OpenVINO / NNCF


def quantize_openvino_bounded(job: "ExportJob", model, runner: Callable[[Any], Runner]) -> tuple[Any, dict[str, Any]]:
    """The NNCF INT8 of an OpenVINO model within the job's --max-drop, and how it was made.

    `runner` turns an in-memory model into a validation runner (compiled like the exporter's).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    images = job.calibration()
    calibration = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    if job.max_drop is None:
        return nncf.quantize(model, calibration, subset_size=len(images)), \
            {"calibrator": "mean-minmax", "kept_layers": [], "max_drop": None}
    options = {
        "mean-minmax": None,  # NNCF's default for per-tensor activations
        "mean-quantile": AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE),
    }
    search = Search(job, "openvino")
    quantized = {}
    for name, params in options.items():
        quantized[name] = nncf.quantize(model, calibration, subset_size=len(images), advanced_parameters=params)
        if search.measure(runner(quantized[name]), name, []):
            return quantized[name], search.record(name, [])
    name = search.best()["calibrator"]
    layers = len(_quantized_layers(quantized[name]))
    inputs, labels = _normalised(job), job.reference.labels
    validation = nncf.Dataset([(inputs[i : i + 1], labels[i]) for i in range(len(inputs))])

    def accuracy(compiled, items) -> float:
        hits = [int(np.argmax(compiled(image)[0]) == label) for image, label in items]
        return float(np.mean(hits)) if hits else 0.0

    restored = nncf.quantize_with_accuracy_control(
        model, calibration, validation, accuracy, max_drop=job.max_drop / 100, subset_size=len(images),
        advanced_quantization_parameters=options[name],
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=max_kept(layers)),
    )
    kept = sorted(_quantized_layers(quantized[name]) - _quantized_layers(restored))
    if search.measure(runner(restored), name, kept):
        return restored, search.record(name, kept)
    search.refuse()


def _quantized_layers(model) -> set[str]:
    """Compute ops of an OpenVINO model that read a FakeQuantize output (weights or activations)."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in OV_COMPUTE_OPS
            and any(port.get_source_output().get_node().get_type_name() == "FakeQuantize"
                    for port in op.inputs())}


def _normalised(job: "ExportJob") -> np.ndarray:
    from edgeft.export.quantize import normalise

    return normalise(job.reference.images, job.card)
