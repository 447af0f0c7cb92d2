"""TensorRT engines from the ONNX variants, or a device-side build recipe where none can be built.

TensorRT 11 dropped the weak-typing precision flags (FP16/INT8 builder flags, INT8
calibrators); precision now lives in the graph. So the engine is built strongly typed from
the ONNX that already has the precision: fp16 from the float16 ONNX, int8 from the
symmetric Q/DQ ONNX calibrated on the run's images (explicit quantization) — the same path
works on TensorRT 10 (with the STRONGLY_TYPED flag) and 11. The engine has the ONNX's static
batch (1 by default); a dynamic batch gets the export's `--batch-profile` as its one
optimisation profile. The builder is the runtime's (`edgeft.runtime.tensorrt.build_engine`,
also used on the device); a timing cache beside the engines makes rebuilds fast.

Engines are tied to the GPU and TensorRT version that built them, so without tensorrt or a
CUDA GPU (any host that is not the device) the exporter ships the ONNX, validated with
onnxruntime, plus a `trtexec` command and an `edgeft` command to build it on the device.
"""
from __future__ import annotations

import logging
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeft.artifacts import atomic_write, write_bytes, write_text
from edgeft.errors import EdgeftError
from edgeft.export.base import EXPORTERS, Exporter, ExportJob, ExportRecord, library_version, require
from edgeft.export.onnx import input_name, onnx_variant, onnx_versions, ort_runner
from edgeft.export.validate import DEFAULT_TOLERANCES, Runner, fit_batch
from edgeft.runtime.tensorrt import build_engine

log = logging.getLogger(__name__)

CACHE_NAME = "timing.cache"


def unavailable() -> str | None:
    """Why no engine can be built here, or None when tensorrt and a CUDA GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed here"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here"
    return None


@EXPORTERS.register("tensorrt", aliases=("trt",))
class TensorRTExporter(Exporter):
    """Serialized TensorRT engines for NVIDIA GPUs and Jetson boards."""

    name = "tensorrt"
    suffix = ".engine"
    # TensorRT may run fp32 convolutions in TF32 on Ampere and newer, which moves logits ~1e-3.
    tolerances = {**DEFAULT_TOLERANCES, "fp32": replace(DEFAULT_TOLERANCES["fp32"], atol=1e-2, min_cosine=0.9995)}

    def export(self, job: ExportJob, precision: str) -> ExportRecord:
        folder = job.engines / self.name
        onnx_path = folder / f"model-{precision}.onnx"
        atomic_write(onnx_path, lambda tmp: shutil.copyfile(onnx_variant(job, precision, self.name), tmp))
        quantization = job.quantization.get(self.name) if precision == "int8" else None
        engine = self.engine_path(job, precision)
        recipe = build_recipe(job, onnx_path, engine, precision)
        reason = unavailable()
        if reason is None:
            plan = build_engine(onnx_path, job.batch.profile, folder / CACHE_NAME)
            write_bytes(engine, plan)
            return self.finish(job, precision, [engine, onnx_path], trt_runner(engine),
                               f"tensorrt {_trt_version()} on {_gpu_name()}", recipe=recipe, quantization=quantization)
        script = folder / f"build-{precision}.sh"
        write_text(script, _script(recipe["trtexec"]))
        script.chmod(0o755)
        note = (f"{reason}: wrote {job.relative(onnx_path)} and its device-side build recipe "
                f"({job.relative(script)}); build the engine on the target device")
        return self.finish(job, precision, [onnx_path, script], ort_runner(onnx_path),
                           f"onnxruntime {library_version('onnxruntime')} CPU on the ONNX to build from "
                           "(no TensorRT engine built here)", runtime="onnxruntime", note=note, recipe=recipe,
                           skipped=f"{reason}: recipe written ({job.relative(script)})", quantization=quantization)

    def versions(self) -> dict[str, str | None]:
        return {**onnx_versions(), "tensorrt": _trt_version()}


def build_recipe(job: ExportJob, onnx_path: Path, engine: Path, precision: str) -> dict[str, str]:
    """The commands that build this engine on a device: trtexec, or edgeft with tensorrt installed."""
    c, h, w = job.card.input_size
    name = input_name(onnx_path)
    shape = lambda batch: f"{name}:{batch}x{c}x{h}x{w}"  # noqa: E731
    shapes, flags = [], ""  # a static ONNX takes no shape flags: trtexec builds its one shape
    if job.batch.profile:
        low, opt, high = job.batch.profile
        shapes = [f"--minShapes={shape(low)}", f"--optShapes={shape(opt)}", f"--maxShapes={shape(high)}"]
        flags = f" --batch-profile {low},{opt},{high}"
    elif job.batch.size != 1:
        flags = f" --batch {job.batch.size}"
    trtexec = " ".join(["trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine.name}", "--stronglyTyped",
                        *shapes, f"--timingCacheFile={CACHE_NAME}"])
    edgeft = f"edgeft export {shlex.quote(str(job.run.root))} --format tensorrt --precision {precision}{flags}"
    return {"trtexec": trtexec, "edgeft": edgeft, "workdir": job.relative(onnx_path.parent)}


def trt_runner(engine_path: Path) -> Runner:
    """Runs a serialized engine on the current CUDA device, buffers held by torch."""
    import torch

    trt = require("tensorrt", "edgeft[tensorrt]")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EdgeftError(f"{engine_path}: TensorRT cannot load this engine (built for another GPU or version?)")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    out_dtype = torch.float16 if engine.get_tensor_dtype(out) == trt.DataType.HALF else torch.float32
    stream = torch.cuda.Stream()
    first = engine.get_tensor_shape(inp)[0]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.cuda.stream(stream):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to("cuda", non_blocking=False)
            context.set_input_shape(inp, tuple(x.shape))
            y = torch.empty(tuple(context.get_tensor_shape(out)), dtype=out_dtype, device="cuda")
            context.set_tensor_address(inp, x.data_ptr())
            context.set_tensor_address(out, y.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise EdgeftError(f"{engine_path}: TensorRT inference failed")
            stream.synchronize()
        return y.float().cpu().numpy()

    return fit_batch(run, first if first > 0 else None)


def _script(trtexec: str) -> str:
    return (
        "#!/bin/sh\n"
        "# Builds the TensorRT engine on the target device (TensorRT >= 10; on TensorRT 8.x replace\n"
        "# --stronglyTyped with --fp16 or --int8). Run from anywhere; files are next to this script.\n"
        'cd "$(dirname "$0")" || exit 1\n'
        f"exec {trtexec}\n"
    )


def _trt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())
