"""OpenVINO IR (.xml + .bin) from the fp32 ONNX: fp32, fp16 weight compression, NNCF INT8.

INT8 is NNCF post-training quantization (symmetric, the OpenVINO default preset) on the
run's calibration images, bounded by --max-drop where given (int8_guard.py). Validation compiles the IR on the CPU plugin with an explicit
inference precision (f32; f16 for the fp16 IR where the CPU computes in f16), so that the
figures do not depend on the host's bf16 default.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgeft.errors import EdgeftError, RefusedError
from edgeft.export.base import EXPORTERS, Exporter, ExportJob, ExportRecord, library_version, require
from edgeft.export.onnx import export_failure, onnx_variant
from edgeft.export.int8_guard import quantize_openvino_bounded
from edgeft.export.validate import Runner, fit_batch

log = logging.getLogger(__name__)


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
    """NNCF post-training INT8 on the calibration images (within --max-drop: int8_guard.py)."""
    nncf = require("nncf", "nncf")
    nncf.set_log_level(logging.ERROR)
    with _quiet("torch.utils.cpp_extension"):
        try:
            return quantize_openvino_bounded(job, model, ov_runner)
        except EdgeftError:
            raise
        except Exception as exc:  # noqa: BLE001 - NNCF fails in many untyped ways; int8 alone is refused
            raise RefusedError(f"openvino int8: NNCF quantization failed ({export_failure(exc)})") from exc


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
