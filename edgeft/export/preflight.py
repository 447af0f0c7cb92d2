"""Pre-flight: export the untrained student to the target's formats before any training.

An unsupported operator otherwise surfaces only when `edgeft compress --format/--target`
exports after hours of distillation (ECOSYSTEM.md pain point 6). `run_preflight` builds the
student with timm (`exportable=True`, random weights), exports it to ONNX in a temporary
folder and lets every runtime of the requested formats read it:

- onnx: the ONNX checker (full check, with shape inference) and one onnxruntime inference;
- openvino: converted from the ONNX and compiled on the CPU plugin, one inference;
- tensorrt: parsed by TensorRT's ONNX parser where tensorrt and a CUDA GPU are here; else
  the ONNX check only (the engine is built on the device), which the result says.

The opset is picked automatically (`pick_opset`): the highest, at most the exporter's
OPSET, that the installed runtimes declare they read. Where a runtime still refuses the
model, lower opsets are tried down to MIN_OPSET before the failure is reported; the dynamo
exporter implements opset 18 and up and converts below it, and where that conversion fails
the file keeps 18 and the trying stops (the record holds the opset the file really has).
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeft.artifacts import StudentCard
from edgeft.errors import EdgeftError
from edgeft.export.base import EXPORTERS, BatchShape, library_version, require
from edgeft.export.onnx import OPSET, export_onnx, onnx_opset
from edgeft.export.tensorrt import unavailable

log = logging.getLogger(__name__)

MIN_OPSET = 17  # lowest opset tried when a runtime refuses the model
TENSORRT_8_OPSET = 17  # TensorRT 8.6 (JetPack 6.0) parses opsets up to 17 (onnx-tensorrt 8.6 operators.md)


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight checked: the opset that every runtime accepted, and how each format was checked."""

    arch: str
    opset: int
    checks: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        how = "; ".join(f"{fmt}: {what}" for fmt, what in self.checks.items())
        return f"pre-flight: {self.arch} exports at opset {self.opset} ({how}) in {self.seconds:.1f} s"


def pick_opset(formats: Sequence[str]) -> int:
    """The highest opset <= OPSET that the installed runtimes of `formats` declare they read.

    onnxruntime (which validates ONNX and TensorRT-recipe exports) declares its operator
    schemas; an installed TensorRT 8.x reads up to opset 17. Where TensorRT is not installed,
    the device builds the engine with the strongly typed recipe, which needs TensorRT >= 10
    (opset 18 parses). OpenVINO declares nothing; the pre-flight's conversion checks it.
    """
    formats = [EXPORTERS.canonical(f) for f in formats]
    ceiling = OPSET
    if "onnx" in formats or "tensorrt" in formats:
        ceiling = min(ceiling, _onnxruntime_opset())
    version = library_version("tensorrt") if "tensorrt" in formats else None
    if version is not None and int(version.split(".")[0]) < 10:
        ceiling = min(ceiling, TENSORRT_8_OPSET)
    return ceiling


def run_preflight(arch: str, formats: Sequence[str], input_size: tuple[int, int, int] = (3, 224, 224),
              batch: BatchShape = BatchShape(), num_classes: int = 10) -> Preflight:
    """Exports the untrained `arch` to ONNX and has every runtime of `formats` read it (see the module doc).

    Raises a one-line EdgeftError naming the student and, where the exporter or runtime says
    it, the operator; returns the opset that passed, to export the trained student with.
    """
    import onnx

    began = time.perf_counter()
    formats = list(dict.fromkeys(EXPORTERS.canonical(f) for f in formats))
    model, card = _untrained(arch, input_size, num_classes)
    failure, tried = "", []
    with tempfile.TemporaryDirectory(prefix="edgeft-preflight-") as tmp:
        for opset in range(pick_opset(formats), MIN_OPSET - 1, -1):
            try:
                path = export_onnx(model, card, Path(tmp) / f"student-{opset}.onnx", batch, opset)
            except EdgeftError as exc:
                raise EdgeftError(f"pre-flight: {exc}; pick another --student or --format") from None
            actual = onnx_opset(onnx.load_model(str(path), load_external_data=False))
            if failure and actual != opset:
                break  # the exporter could not convert down: the refusal stands
            tried.append(str(actual))
            checks, failure = _runtimes_read(path, formats, batch, arch)
            if not failure:
                result = Preflight(arch, actual, checks, round(time.perf_counter() - began, 2))
                log.info(result.summary())
                return result
            log.info("pre-flight at opset %d: %s", opset, failure)
    raise EdgeftError(f"pre-flight: {failure} at opset {', '.join(tried)}; pick another --student or --format")


def _untrained(arch: str, input_size: tuple[int, int, int], num_classes: int) -> tuple[Any, StudentCard]:
    """The randomly initialised student and a card for it."""
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, exportable=True).eval()
    except RuntimeError as exc:
        raise EdgeftError(f"pre-flight: cannot build the student '{arch}' with timm ({exc})") from None
    card = StudentCard(arch=arch, num_classes=num_classes, class_names=[str(i) for i in range(num_classes)],
                       input_size=tuple(input_size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), teacher="",
                       method="preflight")
    return model, card


def _runtimes_read(path: Path, formats: list[str], batch: BatchShape, arch: str) -> tuple[dict[str, str], str]:
    """Each format's runtime reads the ONNX: (what each said, the first failure or "")."""
    checks = {}
    for fmt in formats:
        try:
            checks[fmt] = CHECKS[fmt](path, batch)
        except EdgeftError as exc:
            return checks, f"{fmt} cannot run the untrained student '{arch}' ({exc})"
    return checks, ""


def check_onnx(path: Path, batch: BatchShape) -> str:
    """The ONNX checker (full, with shape inference), then one onnxruntime inference."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EdgeftError(f"ONNX check: {_first(exc)}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        session.run(None, {first.name: _zeros(first.shape, batch)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped errors
        raise EdgeftError(f"onnxruntime {library_version('onnxruntime')}: {_operator(exc)}") from None
    return f"checker + onnxruntime {library_version('onnxruntime')} inference"


def check_openvino(path: Path, batch: BatchShape) -> str:
    """Converted by OpenVINO from the ONNX and compiled on its CPU plugin, one inference."""
    ov = require("openvino", "openvino")
    try:
        compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU")
        shape = [d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape()]
        compiled(_zeros(shape, batch))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises untyped RuntimeErrors
        raise EdgeftError(f"openvino {library_version('openvino')}: {_operator(exc)}") from None
    return f"converted + compiled on CPU (openvino {library_version('openvino')})"


def check_tensorrt(path: Path, batch: BatchShape) -> str:
    """TensorRT's ONNX parser where tensorrt and a GPU are here, else the ONNX check only (said so)."""
    reason = unavailable()
    if reason is not None:
        check_onnx(path, batch)
        log.warning("pre-flight for tensorrt: %s, so only the ONNX was checked; the device's TensorRT parses it", reason)
        return f"ONNX check only ({reason})"
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeftError(f"TensorRT {trt.__version__} parser: {errors[:200]}")
    return f"parsed by TensorRT {trt.__version__}"


CHECKS: dict[str, Callable[[Path, BatchShape], str]] = {
    "onnx": check_onnx, "openvino": check_openvino, "tensorrt": check_tensorrt,
}


def _onnxruntime_opset() -> int:
    """The highest default-domain opset among onnxruntime's operator schemas."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return max(s.since_version for s in ort_state.get_all_operator_schema() if s.domain in ("", "ai.onnx"))


def _zeros(shape: Sequence, batch: BatchShape) -> np.ndarray:
    """A zero input of `shape`, its dynamic batch axis set to the profile's opt size."""
    dims = [d if isinstance(d, int) and d > 0 else batch.size for d in shape]
    return np.zeros(dims, np.float32)


def _operator(exc: BaseException) -> str:
    """The runtime's complaint, led by the operator it names (onnxruntime, OpenVINO phrasing)."""
    text = str(exc)
    match = (re.search(r"implementation for (\w+)\(\d+\)", text)
             or re.search(r"conversion rule[^:]*:\s*([\w.\-]+(?:, [\w.\-]+)*)", text)
             or re.search(r"[Uu]nsupported (?:operator|op)[^\w]*([\w.\-]+)", text))
    first = _first(exc)
    return f"unsupported operator {match.group(1)}: {first}" if match else first


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
