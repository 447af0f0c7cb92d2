"""OpenVINO IR (.xml + .bin) from the fp32 ONNX: fp32, fp16 weight compression, NNCF INT8.

INT8 is NNCF post-training quantization (symmetric, the OpenVINO default preset) on the
run's calibration images: NNCF's default calibration (mean of per-image min/max) without a bound.
With --max-drop, the format-neutral search (int8_guard.bounded_int8) measures NNCF's default and
mean-quantile activation ranges, then NNCF's own quantize_with_accuracy_control on the better one,
which ranks the layers by sensitivity and reverts the worst to float (at most int8_guard.max_kept).
Validation compiles the IR on the CPU plugin with an explicit inference precision (f32; f16 for
the fp16 IR where the CPU computes in f16), so that the figures do not depend on the host's bf16
default.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgeft.errors import EdgeftError, RefusedError
from edgeft.export.base import EXPORTERS, Exporter, ExportJob, ExportRecord, library_version, require
from edgeft.export.int8_guard import Try, bounded_int8, max_kept, unbounded
from edgeft.export.onnx import export_failure, onnx_variant
from edgeft.export.quantize import normalise
from edgeft.export.validate import Runner, fit_batch

log = logging.getLogger(__name__)

OV_COMPUTE_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}


@EXPORTERS.register("openvino", aliases=("ov",))
class OpenVinoExporter(Exporter):
    """OpenVINO IR for Intel CPUs, GPUs and NPUs."""

    name = "openvino"
    suffix = ".xml"

    def export(self, job: ExportJob, precision: str) -> ExportRecord:
        ov = require("openvino", "openvino")
        model = ov.convert_model(str(onnx_variant(job, "fp32")))
        quantization = None
        if precision == "int8":
            model, quantization = _quantize(model, job)
        model.set_rt_info(json.dumps(job.card.to_json()), ["edgeft", "card"])
        files = save_ir(model, self.engine_path(job, precision), compress_to_fp16=precision == "fp16")
        core = ov.Core()
        cpu_has_f16 = "FP16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        hint = "f16" if precision == "fp16" and cpu_has_f16 else "f32"
        return self.finish(job, precision, files, ov_runner(files[0], hint),
                           f"openvino {library_version('openvino')} CPU, inference precision {hint}",
                           quantization=quantization)

    def versions(self) -> dict[str, str | None]:
        return {name: library_version(name) for name in ("torch", "onnx", "openvino", "nncf")}


def save_ir(model, xml: Path, compress_to_fp16: bool) -> list[Path]:
    """Saves the IR pair next to each other and moves both into place (weights first)."""
    ov = require("openvino", "openvino")
    staging = xml.parent / f".{xml.stem}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        ov.save_model(model, str(staging / xml.name), compress_to_fp16=compress_to_fp16)
        bin_path = xml.with_suffix(".bin")
        os.replace(staging / bin_path.name, bin_path)
        os.replace(staging / xml.name, xml)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [xml, bin_path]


def ov_runner(model, hint: str = "f32") -> Runner:
    """An OpenVINO model (in memory, or an IR path) compiled for the CPU as a validation runner."""
    ov = require("openvino", "openvino")
    compiled = ov.Core().compile_model(str(model) if isinstance(model, Path) else model, "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint})
    first = compiled.inputs[0].get_partial_shape()[0]
    return fit_batch(lambda batch: compiled(batch)[0], first.get_length() if first.is_static else None)


def _quantize(model, job: ExportJob):
    """NNCF post-training INT8 on the calibration images (within --max-drop where given)."""
    nncf = require("nncf", "nncf")
    nncf.set_log_level(logging.ERROR)
    with _quiet("torch.utils.cpp_extension"):
        try:
            return quantize_openvino_bounded(job, model, ov_runner)
        except EdgeftError:
            raise
        except Exception as exc:  # noqa: BLE001 - NNCF fails in many untyped ways; int8 alone is refused
            raise RefusedError(f"openvino int8: NNCF quantization failed ({export_failure(exc)})") from exc


def quantize_openvino_bounded(job: ExportJob, model, runner: Callable[[Any], Runner] = ov_runner
                              ) -> tuple[Any, dict[str, Any]]:
    """The NNCF INT8 of an OpenVINO model within the job's --max-drop, and how it was made.

    `runner` turns an in-memory model into a validation runner (compiled like the exporter's).
    """
    import nncf

    images = job.calibration()
    calibration = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    if job.max_drop is None:
        return nncf.quantize(model, calibration, subset_size=len(images)), unbounded("mean-minmax")
    candidates = _NncfCandidates(job, model, calibration, len(images))
    tries = [Try(name, partial(candidates.build, name)) for name in candidates.options]
    return bounded_int8(job, "openvino", tries, runner, candidates.keep_float)


@dataclass
class _NncfCandidates:
    """The NNCF INT8 models of one bounded search, each calibration's kept for the fallback."""

    job: ExportJob
    model: Any
    calibration: Any  # nncf.Dataset of single calibration images
    subset: int
    options: dict[str, Any] = field(init=False)  # calibrator → NNCF advanced parameters, in the order tried
    built: dict[str, Any] = field(init=False, default_factory=dict)  # calibrator → its quantized model

    def __post_init__(self) -> None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        self.options = {
            "mean-minmax": None,  # NNCF's default for per-tensor activations
            "mean-quantile": AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE),
        }

    def build(self, name: str):
        import nncf

        self.built[name] = nncf.quantize(self.model, self.calibration, subset_size=self.subset,
                                         advanced_parameters=self.options[name])
        return self.built[name]

    def keep_float(self, name: str) -> Iterator[Try]:
        """NNCF's quantize_with_accuracy_control on `name`'s calibration: the layers it reverted stay in float."""
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        inputs, labels = normalise(self.job.reference.images, self.job.card), self.job.reference.labels
        validation = nncf.Dataset([(inputs[i : i + 1], labels[i]) for i in range(len(inputs))])
        restored = nncf.quantize_with_accuracy_control(
            self.model, self.calibration, validation, _accuracy, max_drop=self.job.max_drop / 100,
            subset_size=self.subset, advanced_quantization_parameters=self.options[name],
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=max_kept(len(_quantized_layers(self.built[name])))),
        )
        kept = sorted(_quantized_layers(self.built[name]) - _quantized_layers(restored))
        yield Try(name, lambda: restored, kept)


def _accuracy(compiled, items) -> float:
    """NNCF's validation function: top-1 accuracy of a compiled model on (image, label) items."""
    hits = [int(np.argmax(compiled(image)[0]) == label) for image, label in items]
    return float(np.mean(hits)) if hits else 0.0


def _quantized_layers(model) -> set[str]:
    """Compute ops of an OpenVINO model that read a FakeQuantize output (weights or activations)."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in OV_COMPUTE_OPS
            and any(port.get_source_output().get_node().get_type_name() == "FakeQuantize"
                    for port in op.inputs())}


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silences one logger: nncf probes torch's C++ toolchain, which warns about CUDA on CPU hosts."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
