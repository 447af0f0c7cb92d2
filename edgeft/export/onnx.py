"""ONNX export: torch.onnx (dynamo) at opset 18, dynamic batch, the student card as metadata.

The graph takes normalised NCHW float32 images (input `input`, output `logits`), exactly
what the timm student takes; the card in the metadata (`edgeft.card`) tells a runtime the
input size, mean/std and class names. FP16 is onnxruntime's float16 converter with float32
inputs/outputs kept; INT8 is ONNX Runtime static Q/DQ (quantize.py). Every other format
starts from these files, so they are built once per export run and shared.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from edgeft.artifacts import StudentCard, atomic_write
from edgeft.errors import EdgeftError
from edgeft.export.base import EXPORTERS, INPUT_NAME, OUTPUT_NAME, Exporter, ExportJob, ExportRecord, library_version
from edgeft.export.quantize import quantize_onnx
from edgeft.export.validate import Runner

log = logging.getLogger(__name__)

OPSET = 18
CARD_KEY = "edgeft.card"
INPUT_KEY = "edgeft.input"
INPUT_DOC = "NCHW float32 RGB in [0,1], normalised per channel: (x - mean) / std from edgeft.card"


def export_onnx(model: torch.nn.Module, card: StudentCard, path: Path) -> Path:
    """Exports the timm student to an fp32 ONNX file with a dynamic batch axis."""
    example = torch.zeros(2, *card.input_size)
    try:
        program = torch.onnx.export(
            model.eval(), (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False, verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same user-facing problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgeftError(f"cannot export the student '{card.arch}' to ONNX ({first})") from None
    return save_onnx(simplify(program.model_proto), card, path)


def simplify(model):
    """Folds and fuses the graph with onnxslim when it is installed (optional)."""
    try:
        import onnxslim
    except ImportError:
        return model
    return onnxslim.slim(model)


def save_onnx(model, card: StudentCard, path: Path) -> Path:
    """Stamps the student card into the metadata, checks the model and saves it atomically."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props.update({CARD_KEY: json.dumps(card.to_json()), INPUT_KEY: INPUT_DOC})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return atomic_write(path, lambda tmp: onnx.save_model(model, tmp))


def load_onnx(path: Path, card: StudentCard):
    """Reads a user-given fp32 ONNX (--onnx) and checks that it takes the student's input."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise EdgeftError(f"--onnx {path}: file not found")
    try:
        model = onnx.load_model(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EdgeftError(f"--onnx {path}: not a valid ONNX model ({first}); export it again") from None
    inputs = _graph_inputs(model)
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    expected = list(card.input_size)
    if len(dims) != 4 or any(isinstance(d, int) and d != e for d, e in zip(dims[1:], expected)):
        raise EdgeftError(f"--onnx {path}: takes input {dims or 'several tensors'}, the student one N×"
                          f"{'×'.join(map(str, expected))} tensor; pass the ONNX of this run's student")
    return model


def onnx_variant(job: ExportJob, precision: str) -> Path:
    """The fp32/fp16/int8 ONNX of the job's student, built once per job in its work folder."""
    key = f"onnx-{precision}"
    if key not in job.cache:
        path = job.workdir / f"model-{precision}.onnx"
        if precision == "fp32":
            if job.onnx_source is not None:
                save_onnx(load_onnx(job.onnx_source, job.card), job.card, path)
            else:
                export_onnx(job.model, job.card, path)
        elif precision == "fp16":
            to_fp16(onnx_variant(job, "fp32"), path, job.card)
        else:
            source = onnx_variant(job, "fp32")
            quantize_onnx(source, path, job.calibration(), input_name(source))
            _restamp(path, job.card)
        job.cache[key] = path
    return job.cache[key]


def to_fp16(src: Path, dst: Path, card: StudentCard) -> Path:
    """Float16 weights and activations with float32 inputs/outputs (onnxruntime's converter).

    The converter appends its input casts at the end of the node list; the graph is sorted
    again (onnx_ir) because the checker, TensorRT and OpenVINO want topological order.
    """
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_ir.from_proto(convert_float_to_float16(onnx.load_model(str(src)), keep_io_types=True))
    model.graph.sort()
    return save_onnx(onnx_ir.to_proto(model), card, dst)


def input_name(path: Path) -> str:
    import onnx

    return _graph_inputs(onnx.load_model(str(path), load_external_data=False))[0].name


def ort_runner(path: Path) -> Runner:
    """An onnxruntime CPU session on `path` as a validation runner."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EdgeftError(f"{path}: onnxruntime cannot load it ({first})") from None
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.ascontiguousarray(batch)})[0]


def onnx_versions() -> dict[str, str | None]:
    return {name: library_version(name) for name in ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime")}


@EXPORTERS.register("onnx")
class OnnxExporter(Exporter):
    """ONNX files for ONNX Runtime (and any ONNX consumer), validated with onnxruntime on CPU."""

    name = "onnx"
    suffix = ".onnx"

    def export(self, job: ExportJob, precision: str) -> ExportRecord:
        path = self.engine_path(job, precision)
        atomic_write(path, lambda tmp: shutil.copyfile(onnx_variant(job, precision), tmp))
        return self.finish(job, precision, [path], ort_runner(path),
                           f"onnxruntime {library_version('onnxruntime')} CPU")

    def versions(self) -> dict[str, str | None]:
        return onnx_versions()


def _restamp(path: Path, card: StudentCard) -> None:
    import onnx

    save_onnx(onnx.load_model(str(path)), card, path)


def _graph_inputs(model) -> list:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]
