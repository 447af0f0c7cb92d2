"""ONNX export: torch.onnx (dynamo), static batch 1 unless a batch profile asks for a dynamic axis.

The graph takes normalised NCHW float32 images (input `input`, output `logits`), exactly
what the timm student takes; the card in the metadata (`edgeft.card`) tells a runtime the
input size, mean/std and class names. FP16 is onnxruntime's float16 converter with float32
inputs/outputs kept; INT8 is ONNX Runtime static Q/DQ (quantize.py, onnx_int8.py) in the scheme this
CPU runs fast, and a symmetric signed one for TensorRT (`consumer="tensorrt"`). Every other format
starts from these files, so they are built once per export run and shared. The opset is
the job's (picked for its formats by preflight.pick_opset, at most the exporter's OPSET).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from edgeft.artifacts import StudentCard, atomic_write
from edgeft.errors import EdgeftError, RefusedError
from edgeft.export.base import (EXPORTERS, INPUT_NAME, OUTPUT_NAME, BatchShape, Exporter, ExportJob, ExportRecord,
                                library_version)
from edgeft.export.onnx_int8 import quantize_onnx_bounded
from edgeft.export.quantize import TENSORRT_SCHEME, cpu_scheme
from edgeft.export.validate import Runner, fit_batch
from edgeft.runtime.layers import MODULES_KEY, module_map

log = logging.getLogger(__name__)

OPSET = 18
CARD_KEY = "edgeft.card"
INPUT_KEY = "edgeft.input"
INPUT_DOC = "NCHW float32 RGB in [0,1], normalised per channel: (x - mean) / std from edgeft.card"


def export_onnx(model: torch.nn.Module, card: StudentCard, path: Path, batch: BatchShape = BatchShape(),
                opset: int = OPSET) -> Path:
    """Exports the timm student to an fp32 ONNX file: a static batch, or a dynamic one for a profile."""
    if batch.dynamic:  # traced at 2: torch.export specialises sizes 0 and 1
        example, dynamic = torch.zeros(2, *card.input_size), ({0: torch.export.Dim("batch")},)
    else:
        example, dynamic = torch.zeros(batch.size, *card.input_size), None
    try:
        program = torch.onnx.export(
            model.eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same user-facing problem
        raise EdgeftError(f"cannot export the student '{card.arch}' to ONNX ({export_failure(exc)})") from None
    modules = module_map(program.model_proto.graph)  # before onnxslim, which drops node metadata
    return save_onnx(simplify(program.model_proto), card, path, {MODULES_KEY: json.dumps(modules)})


def export_failure(exc: BaseException) -> str:
    """One line on why an export failed: the operator it names, with the exporter's summary of it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    # torch.onnx (dynamo) sums the cause up as "<class '...DispatchError'>: No ONNX function found for ..."
    summary = next((line.split(">: ", 1)[1] for line in lines if line.startswith("<class") and ">: " in line), lines[0])
    op = re.search(r"(aten[.:]{1,2}\w[\w.]*|torch\.ops\.[\w.]+)", text)
    return (f"unsupported operator {op.group(1)}: " if op else "") + summary[:160]


def simplify(model):
    """Folds and fuses the graph with onnxslim when it is installed (optional)."""
    try:
        import onnxslim
    except ImportError:
        return model
    return onnxslim.slim(model)


def save_onnx(model, card: StudentCard, path: Path, extra: dict[str, str] | None = None) -> Path:
    """Stamps the student card (and `extra` metadata) into the model, checks it and saves it atomically."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props.update({CARD_KEY: json.dumps(card.to_json()), INPUT_KEY: INPUT_DOC, **(extra or {})})
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


def onnx_variant(job: ExportJob, precision: str, consumer: str = "onnx") -> Path:
    """The fp32/fp16/int8 ONNX of the job's student, built once per job in its work folder.

    `consumer` matters for int8 only: "onnx" (ONNX Runtime on this CPU) or "tensorrt"; how
    each was quantised is kept in `job.quantization[consumer]`.
    """
    variant = precision if precision != "int8" or consumer == "onnx" else f"{precision}-{consumer}"
    key = f"onnx-{variant}"
    if key in job.failed:  # e.g. TensorRT fp16 after the ONNX fp32 it is built from was refused
        raise RefusedError(f"the ONNX {variant} it is built from was refused: {job.failed[key]}")
    if key not in job.cache:
        path = job.workdir / f"model-{variant}.onnx"
        try:
            _build_variant(job, precision, path, consumer)
        except Exception as exc:
            job.failed[key] = str(exc) if isinstance(exc, EdgeftError) else export_failure(exc)
            if isinstance(exc, EdgeftError):
                raise
            raise RefusedError(f"onnx {variant}: the conversion failed ({job.failed[key]})") from exc
        job.cache[key] = path
    return job.cache[key]


def _build_variant(job: ExportJob, precision: str, path: Path, consumer: str) -> None:
    if precision == "fp32":
        if job.onnx_source is not None:
            given = with_batch(load_onnx(job.onnx_source, job.card), job.batch)
            save_onnx(given, job.card, path, {MODULES_KEY: json.dumps(module_map(given.graph))})
        else:
            export_onnx(job.model, job.card, path, job.batch, job.opset or OPSET)
        job.opset = onnx_opset(_load(path))  # what the file has (the exporter may not convert down)
    elif precision == "fp16":
        to_fp16(onnx_variant(job, "fp32"), path, job.card)
    else:
        source = onnx_variant(job, "fp32")
        scheme = TENSORRT_SCHEME if consumer == "tensorrt" else cpu_scheme()
        job.quantization[consumer] = quantize_onnx_bounded(job, source, path, input_name(source), scheme,
                                                           ort_runner)
        _restamp(path, job.card)


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


def with_batch(model, batch: BatchShape):
    """A user-given ONNX with the job's batch axis: a dynamic axis is fixed to a static batch."""
    dims = [port.type.tensor_type.shape.dim[0] for port in (*_graph_inputs(model), *model.graph.output)
            if port.type.tensor_type.shape.dim]
    if batch.dynamic:
        if dims and dims[0].dim_value:
            raise EdgeftError(f"--batch-profile: the given ONNX has a static batch of {dims[0].dim_value}; "
                              "export one with a dynamic batch axis or drop --batch-profile")
        return model
    for dim in dims:
        if not dim.dim_value:
            dim.dim_value = batch.size  # also clears dim_param
    return model


def onnx_opset(model) -> int | None:
    """The default-domain opset an ONNX model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def input_name(path: Path) -> str:
    return _graph_inputs(_load(path))[0].name


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
    first = session.get_inputs()[0]
    name, size = first.name, first.shape[0] if isinstance(first.shape[0], int) else None
    return fit_batch(lambda batch: session.run(None, {name: np.ascontiguousarray(batch)})[0], size)


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


def _load(path: Path):
    import onnx

    return onnx.load_model(str(path), load_external_data=False)


def _graph_inputs(model) -> list:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]
