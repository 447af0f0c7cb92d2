"""Exporters (ONNX, OpenVINO, TensorRT), one module each, registered in `EXPORTERS`.

`export_run` is the library entry point behind `edgeft export`: it rebuilds the student
from the run's card with timm (never importing `edgeft.compress`), exports each format ×
precision, validates every engine against PyTorch and records them in the run's export manifest (an engine
that fails is refused there with its reason, and the others go on).
"""
from __future__ import annotations

from edgeft.export.base import EXPORTERS, PRECISIONS, BatchShape, Exporter, ExportJob, ExportRecord
from edgeft.export import onnx, openvino, tensorrt  # noqa: F401  (register the exporters)
from edgeft.export.pipeline import ExportResult, Refusal, check_request, export_run, read_records, rebuild_stale
from edgeft.export.preflight import Preflight, pick_opset, run_preflight

__all__ = ["EXPORTERS", "PRECISIONS", "BatchShape", "Exporter", "ExportJob", "ExportRecord", "ExportResult",
           "Preflight", "Refusal", "check_request", "export_run", "pick_opset", "read_records", "rebuild_stale", "run_preflight"]
