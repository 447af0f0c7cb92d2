"""Inference benchmark at the resolution edge users deploy: INT8 speed-up, profiler agreement, real-task INT8 drop.

    PYTHONPATH=. python tools/bench_inference.py [--threads 2] [--models resnet18 ...] [--rounds 3] [--iterations 60]

1. Speed rows (timm, random weights, 224 px, batch 1): ONNX Runtime fp32/fp16/int8 and OpenVINO
   fp32/fp16/int8, built with edgeft's own exporter functions (export.onnx.export_onnx, to_fp16,
   export.onnx_int8, export.openvino), plus the plain `onnxruntime.quantization.quantize_static` engine (QDQ,
   per channel, after `quant_pre_process`, onnxruntime's defaults otherwise) as the INT8 bar.
   Per engine (measure_block): edgeft's engine timed by `edgeft.runtime.profile.time_loop` beside an
   independent loop written here (plain onnxruntime / openvino calls), in alternating chunks over all
   engines of the model, because the CPU is shared and side-by-side ratios are what matter; OpenVINO's
   `benchmark_app` at the same threads, batch and precisions; `edgeft profile ENGINE` once in a fresh
   process for time to first inference and peak RSS.
2. INT8 schemes tried for `edgeft.export.quantize.cpu_scheme` (resnet18), timed the same way.
3. Throughput sweep: dynamic-batch engines of the same models, `edgeft.runtime.profile` at batch 1, 4, 16.
4. Real task: the demo student (`edgeft compress --teacher demo --data demo`, real images) exported by
   `edgeft.export.export_run`; each INT8 engine's accuracy drop against PyTorch on its held-out images,
   and its speed rows at the student's own resolution.
5. The estimator's leave-one-model-out error on this host (the fp32 p50s of 1) and on the public anchors.

Engines and each block's measured rows are cached under .cache/inference/ (a rerun resumes; --fresh
measures again). Writes results/inference.json and results/inference.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, dump_json, provenance, require_cifar  # noqa: E402
from _inference_report import checks, estimator_section, markdown  # noqa: E402

from edgeft import artifacts  # noqa: E402
from edgeft.export.quantize import cpu_scheme, decode, VNNI_FLAGS  # noqa: E402
from edgeft.runtime.fingerprint import cpu_isa  # noqa: E402

MODELS = ("resnet18", "mobilenetv3_large_100", "mobilenetv3_small_100", "tf_efficientnet_lite0", "resnet50",
          "mobilenetv2_100")  # the last: a sixth model for the estimator, the launch-bound case of ECOSYSTEM.md
SIZE = 224
SWEEP = (1, 4, 16)
CALIB_IMAGES = 32
CHUNK = 5  # timed runs per side before switching (after one untimed run)
SETTLE_S = 0.05  # pause before each chunk: the other session's workers stop spinning and park
WORK = CACHE / "inference"
DEMO_RUN = WORK / "demo"
BENCHMARK_APP = Path(sys.executable).with_name("benchmark_app")


@dataclass(frozen=True)
class EngineFile:
    """One engine of a block: how it is labelled, which backend runs it, the file."""

    label: str  # e.g. "onnxruntime int8", "onnxruntime int8 plain"
    backend: str
    precision: str
    path: Path

    def size_mb(self) -> float:
        files = [self.path, self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [self.path]
        return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 2)


@dataclass
class CalibrationJob:
    """What edgeft's unbounded INT8 quantisers read from an ExportJob: the images and no --max-drop."""

    images: np.ndarray
    max_drop: None = None

    def calibration(self) -> np.ndarray:
        return self.images


# ------------------------------------------------------------------------------------------- engines


def calibration_images(size: int, mean, std, count: int = CALIB_IMAGES) -> np.ndarray:
    """`count` CIFAR-10 train images resized to `size` (as edgeft decodes them), normalised."""
    import zipfile

    with zipfile.ZipFile(require_cifar()) as archive:
        names = sorted(n for n in archive.namelist() if "/train/" in n and n.endswith(".jpg"))
        picks = np.random.default_rng(0).choice(len(names), count, replace=False)
        images = np.stack([decode(archive.read(names[i]), size) for i in picks])
    x = images.astype(np.float32) / 255.0
    return ((x - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))).astype(np.float32)


def build_engines(name: str, size: int, dynamic: bool) -> list[EngineFile]:
    """The model's engines (built once into .cache/inference/<name>-<size>[-dynamic]/)."""
    import timm
    import torch

    from edgeft.artifacts import StudentCard
    from edgeft.export.base import BatchShape

    folder = WORK / f"{name}-{size}{'-dynamic' if dynamic else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    engines = [EngineFile("onnxruntime fp32", "onnxruntime", "fp32", folder / "model-fp32.onnx"),
               EngineFile("onnxruntime fp16", "onnxruntime", "fp16", folder / "model-fp16.onnx"),
               EngineFile("onnxruntime int8", "onnxruntime", "int8", folder / "model-int8.onnx"),
               EngineFile("onnxruntime int8 plain", "onnxruntime", "int8", folder / "plain-int8.onnx"),
               EngineFile("openvino fp32", "openvino", "fp32", folder / "model-fp32.xml"),
               EngineFile("openvino fp16", "openvino", "fp16", folder / "model-fp16.xml"),
               EngineFile("openvino int8", "openvino", "int8", folder / "model-int8.xml")]
    if dynamic:
        engines = [e for e in engines if "plain" not in e.label]
    if all(e.path.exists() for e in engines):
        return engines
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, exportable=True).eval()
    cfg = model.pretrained_cfg
    card = StudentCard(arch=name, num_classes=model.num_classes, class_names=[str(i) for i in range(model.num_classes)],
                       input_size=(3, size, size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), teacher="none",
                       method="random weights")
    job = CalibrationJob(calibration_images(size, cfg["mean"], cfg["std"]))
    by_label = {e.label: e.path for e in engines}
    _build_onnx(model, card, by_label, job, BatchShape.parse(profile=SWEEP) if dynamic else BatchShape())
    _build_openvino(by_label, job)
    print(f"built {folder.name}: " + ", ".join(f"{e.label} {e.size_mb()} MB" for e in engines), flush=True)
    return engines


def _build_onnx(model, card, paths: dict[str, Path], job: CalibrationJob, batch) -> None:
    from edgeft.export.base import INPUT_NAME
    from edgeft.export.onnx import export_onnx, ort_runner, to_fp16
    from edgeft.export.onnx_int8 import quantize_onnx_bounded

    fp32 = paths["onnxruntime fp32"]
    if not fp32.exists():
        export_onnx(model, card, fp32, batch)
    if not paths["onnxruntime fp16"].exists():
        to_fp16(fp32, paths["onnxruntime fp16"], card)
    if not paths["onnxruntime int8"].exists():
        quantize_onnx_bounded(job, fp32, paths["onnxruntime int8"], INPUT_NAME, cpu_scheme(), ort_runner)
    if "onnxruntime int8 plain" in paths and not paths["onnxruntime int8 plain"].exists():
        plain_quantize_static(fp32, paths["onnxruntime int8 plain"], job.images, INPUT_NAME)


def plain_quantize_static(src: Path, dst: Path, images: np.ndarray, input_name: str) -> None:
    """The bar: onnxruntime's documented recipe, `quant_pre_process` then `quantize_static` (QDQ, per channel)."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(dst), _Reader(images, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=True)


def _build_openvino(paths: dict[str, Path], job: CalibrationJob) -> None:
    import openvino as ov

    from edgeft.export.openvino import quantize_openvino_bounded, save_ir

    source = str(paths["onnxruntime fp32"])
    for precision in ("fp32", "fp16", "int8"):
        xml = paths[f"openvino {precision}"]
        if xml.exists():
            continue
        model = ov.convert_model(source)
        if precision == "int8":
            model, _ = quantize_openvino_bounded(job, model, runner=None)
        save_ir(model, xml, compress_to_fp16=precision == "fp16")


# ------------------------------------------------------------------------------------------- timing


def edgeft_profile(engine: EngineFile, threads: int, iterations: int) -> dict[str, Any]:
    """`edgeft profile ENGINE` in a fresh process (the worktree's CLI); its JSON record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.json"
        command = [sys.executable, "-m", "edgeft", "profile", str(engine.path), "--target", "host", "--backend",
                   engine.backend, "--threads", str(threads), "--warmup", "5", "--iterations", str(iterations),
                   "--seconds", "0", "--no-sweep", "--no-layers", "--json", str(out)]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(out.read_text())[0]


class IndependentLoop:
    """The same engine through its runtime's plain API, written without edgeft, timed with perf_counter."""

    def __init__(self, engine: EngineFile, threads: int, batch: int = 1) -> None:
        if engine.backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(engine.path), opts, providers=["CPUExecutionProvider"])
            first = session.get_inputs()[0]
            x = np.random.default_rng(0).standard_normal((batch, *first.shape[1:])).astype(np.float32)
            self._run: Callable[[], Any] = lambda: session.run(None, {first.name: x})
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(engine.path), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
            request = compiled.create_infer_request()
            shape = [d.get_length() for d in compiled.inputs[0].get_partial_shape()]
            x = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
            # the runtime's own zero-copy call, as edgeft's backend makes it (a copy of each input and output
            # would put 50-100 µs of numpy into this loop alone)
            self._run = lambda: request.infer({0: x}, share_inputs=True, share_outputs=True)
        for _ in range(5):
            self._run()

    def time(self, runs: int) -> list[float]:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run()
            samples.append((time.perf_counter() - start) * 1e3)
        return samples


def benchmark_app(engine: EngineFile, threads: int, iterations: int) -> dict[str, float] | None:
    """OpenVINO's benchmark_app on an IR: median/average/min latency (ms), latency hint, same threads."""
    if engine.backend != "openvino":
        return None
    # benchmark_app takes -nthreads only with -hint none; one stream, one request, sync is the latency setting
    command = [str(BENCHMARK_APP), "-m", str(engine.path), "-d", "CPU", "-hint", "none", "-nthreads", str(threads),
               "-nstreams", "1", "-nireq", "1", "-api", "sync", "-niter", str(iterations), "-b", "1",
               "-infer_precision", "f32", "-ip", "f32"]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = {key.lower(): float(value) for key, value in re.findall(r"(Median|Average|Min|Max):\s+([\d.]+) ms", text)}
    return found or None


def summary(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"p50": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "min": round(float(a.min()), 3), "runs": len(a)}


def measure_block(engines: list[EngineFile], threads: int, rounds: int, iterations: int) -> list[dict]:
    """Every engine of one model, each measured on its own (only its two sessions open).

    1. Chunks side by side: A `CHUNK` runs of the opened edgeft engine timed by
       `edgeft.runtime.profile.time_loop`, B as many of the independent loop (B then A on odd steps), each after
       one untimed run and a SETTLE_S pause (the other session's workers spin for a moment after its last
       run: timed into the next chunk, that cost a 5-ms ONNX Runtime engine 10-30%); `iterations` runs each. Sessions of the other engines are closed meanwhile: with all fourteen open, the workers of the
       engine timed just before still spun while the next one ran, which cost a 2-ms engine up to 40%.
    2. benchmark_app (OpenVINO engines): `rounds` rounds of an edgeft chunk then a benchmark_app run of
       `iterations` each; the ratio is the median of the per-round ratios.
    3. `edgeft profile ENGINE` once per engine in a fresh process: first inference, peak RSS, its own p50.
    """
    rows = []
    for e in engines:
        timed = _side_by_side(e, threads, rounds, iterations)
        record = edgeft_profile(e, threads, iterations)
        mine, plain = summary(timed["ours"]), summary(timed["theirs"])
        row = {"engine": e.label, "backend": e.backend, "precision": e.precision, "file": e.path.name,
               "size_mb": e.size_mb(), "edgeft": mine, "images_per_s": round(1e3 / mine["p50"], 1),
               "independent": plain, "ratio_independent": round(mine["p50"] / plain["p50"], 3),
               "cli": {"p50": record["latency_ms"]["p50"], "first_inference_ms": record["first_inference_ms"],
                       "load_ms": record["load_ms"], "peak_rss_mb": record["memory"]["peak_rss_mb"],
                       "memory_method": record["memory"]["method"]},
               "load_average_1min": round(float(np.mean(timed["loads"])), 2)}
        if timed["app"]:
            row["benchmark_app"] = {"median": round(float(np.median([a["median"] for a in timed["app"]])), 3),
                                    "min": min(a["min"] for a in timed["app"]), "rounds": len(timed["app"]),
                                    "runs_per_round": iterations}
            row["ratio_benchmark_app"] = round(float(np.median(timed["app_ratios"])), 3)
        rows.append(row)
    return rows


def _side_by_side(e: EngineFile, threads: int, rounds: int, iterations: int) -> dict[str, list]:
    """One engine: edgeft's and the independent loop's runs in alternating chunks, then benchmark_app rounds."""
    from edgeft.runtime import EngineOptions, load
    from edgeft.runtime.profile import time_loop

    loop = IndependentLoop(e, threads)
    timed: dict[str, list] = {"ours": [], "theirs": [], "app": [], "app_ratios": [], "loads": []}
    with load(e.path, e.backend, EngineOptions(threads=threads)) as engine:
        x = engine.input_spec.example(1)
        time_loop(engine, x, 5, 0, 0)
        sides = [lambda: time_loop(engine, x, 1, CHUNK, 0), lambda: loop.time(CHUNK + 1)[1:]]
        for step in range(-(-iterations // CHUNK)):
            for side in (0, 1) if step % 2 == 0 else (1, 0):  # A B, then B A
                time.sleep(SETTLE_S)
                timed["ours" if side == 0 else "theirs"].extend(sides[side]())
            timed["loads"].append(os.getloadavg()[0])
        for _ in range(rounds if e.backend == "openvino" else 0):
            chunk = time_loop(engine, x, 0, iterations, 0)
            found = benchmark_app(e, threads, iterations)
            if found:
                timed["app"].append(found)
                timed["app_ratios"].append(float(np.median(chunk)) / found["median"])
    return timed


def sweep_block(engines: list[EngineFile], threads: int) -> list[dict]:
    """Throughput at batch 1, 4, 16 of each dynamic-batch engine (edgeft.runtime.profile)."""
    from edgeft.runtime.profile import ProfileConfig, profile_engine

    cfg = ProfileConfig(threads=threads, warmup=2, iterations=25, seconds=0, sweep=True, layers=False, points=SWEEP)
    rows = []
    for e in engines:
        record = profile_engine(e.path, e.backend, cfg)
        rows += [{"engine": e.label, **point} for point in record["throughput"]["sweep"]]
    return rows


# ------------------------------------------------------------------------------------------- INT8 schemes


def scheme_engines(name: str, size: int) -> list[tuple[str, Path]]:
    """The ONNX Runtime INT8 schemes tried for `cpu_scheme`, built from the model's fp32 ONNX (cached)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeft.export.base import INPUT_NAME
    from edgeft.export.quantize import TENSORRT_SCHEME, quantize_onnx

    engines = build_engines(name, size, False)
    fp32 = next(e.path for e in engines if e.label == "onnxruntime fp32")
    folder = fp32.parent / "schemes"
    folder.mkdir(exist_ok=True)
    job_images = calibration_images(size, *_mean_std(name))
    edgeft_variants = {"QDQ u8s8 (cpu_scheme on VNNI)": cpu_scheme({"avx512_vnni"}),
                       "QDQ u8s8 reduce_range (cpu_scheme on x86 without VNNI)": cpu_scheme({"avx2"}),
                       "QDQ s8s8 symmetric (TensorRT's; edgeft's INT8 before)": TENSORRT_SCHEME}
    raw_variants = {"QOperator u8s8 per channel": dict(quant_format=QuantFormat.QOperator, per_channel=True,
                                                      activation_type=QuantType.QUInt8),
                    "QDQ u8s8 per-tensor weights": dict(quant_format=QuantFormat.QDQ, per_channel=False,
                                                        activation_type=QuantType.QUInt8),
                    "QDQ s8s8 asymmetric (quantize_static defaults)": dict(quant_format=QuantFormat.QDQ,
                                                                           per_channel=True)}
    out = [("fp32", fp32)]
    for i, (label, scheme) in enumerate(edgeft_variants.items()):
        path = folder / f"edgeft-{i}.onnx"
        if not path.exists():
            quantize_onnx(fp32, path, job_images, INPUT_NAME, scheme)
        out.append((label, path))
    for i, (label, options) in enumerate(raw_variants.items()):
        path = folder / f"raw-{i}.onnx"
        if not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                prepared = Path(tmp) / "pre.onnx"
                quant_pre_process(str(fp32), str(prepared))
                quantize_static(str(prepared), str(path), _Reader(job_images, INPUT_NAME), **options)
        out.append((label, path))
    return out


def _mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm

    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])


class _Reader(CalibrationDataReader):
    """One image at a time, as an onnxruntime calibration data reader."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._items = iter(images[i : i + 1] for i in range(len(images)))
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        return None if item is None else {self._name: item}


def schemes_block(name: str, threads: int, iterations: int) -> dict[str, Any]:
    """Independent-loop p50 of each INT8 scheme beside fp32, one session open at a time (as in measure_block)."""
    samples: dict[str, list[float]] = {}
    for label, path in scheme_engines(name, SIZE):
        samples[label] = IndependentLoop(EngineFile(label, "onnxruntime", "int8", path), threads).time(iterations)
    fp32 = float(np.median(samples["fp32"]))
    return {"model": name, "size": SIZE, "rows": [
        {"scheme": label, "p50": round(float(np.median(v)), 3), "min": round(float(np.min(v)), 3),
         "speedup_vs_fp32": round(fp32 / float(np.median(v)), 2)} for label, v in samples.items()]}


# ------------------------------------------------------------------------------------------- real task


def demo_student(threads: int, rounds: int, iterations: int) -> dict[str, Any]:
    """The demo student: export (onnx, openvino × fp32/fp16/int8), accuracy drops, speed rows at its resolution."""
    from edgeft.artifacts import ExportManifest, RunDir
    from edgeft.cli import cli
    from edgeft.export import export_run

    run = RunDir(DEMO_RUN)
    if not run.has_student():
        cli.main(["compress", "--teacher", "demo", "--data", "demo", "--out", str(DEMO_RUN),
                  *(["--resume"] if run.config.exists() else [])], standalone_mode=False)
    card = artifacts.read_json(run.student_card)
    if not run.export_manifest.exists():
        export_run(run.root, ("onnx", "openvino"), ("fp32", "fp16", "int8"))
    records = ExportManifest.read(run.root).engines
    accuracy = [{"engine": f"{r['format'].replace('onnx', 'onnxruntime')} {r['precision']}", "images": r["images"],
                 "pytorch_top1": r["reference_accuracy"], "engine_top1": r["accuracy"],
                 "drop_points": round((r["reference_accuracy"] - r["accuracy"]) * 100, 2),
                 "top1_agreement": r["top1_agreement"], "scheme": (r.get("quantization") or {}).get("scheme")}
                for r in records]
    engines = [EngineFile(f"{'onnxruntime' if r['format'] == 'onnx' else r['format']} {r['precision']}",
                          "onnxruntime" if r["format"] == "onnx" else "openvino", r["precision"], run.root / r["path"])
               for r in records]
    return {"run": str(run.root), "arch": card["arch"], "input_size": card["input_size"], "method": card["method"],
            "teacher": card["teacher"], "accuracy": accuracy, "rows": measure_block(engines, threads, rounds, iterations)}


# ------------------------------------------------------------------------------------------- report


def cpu_section() -> dict[str, Any]:
    flags = cpu_isa()
    return {"flags": flags, "vnni": bool(set(flags) & VNNI_FLAGS), "int8_scheme": cpu_scheme().to_json(),
            "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30, help="timed runs per engine per round and method")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="measure again instead of reusing cached rows")
    args = parser.parse_args()
    data: dict[str, Any] = {"threads": args.threads, "size": SIZE, "rounds": args.rounds, "iterations": args.iterations,
                            "chunk": CHUNK, "sweep_batches": list(SWEEP),
                            "cpu": cpu_section(), "load_average": {"start": [round(v, 2) for v in os.getloadavg()]}}
    print(f"CPU flags: {' '.join(data['cpu']['flags'])}; VNNI: {'yes' if data['cpu']['vnni'] else 'NO'}; "
          f"int8 scheme {data['cpu']['int8_scheme']['name']}", flush=True)
    plan = f"{args.threads}t-{args.rounds}x{args.iterations}"  # cached rows are reused for the same plan only
    data["models"] = [cached(f"speed-{m}-{SIZE}-{plan}", args.fresh, lambda m=m: {
        "model": m, "size": SIZE, "rows": measure_block(build_engines(m, SIZE, False), args.threads, args.rounds,
                                                        args.iterations)}) for m in args.models]
    if not args.no_sweep:
        data["sweep"] = [cached(f"sweep-{m}-{SIZE}-{args.threads}t", args.fresh, lambda m=m: {
            "model": m, "size": SIZE, "rows": sweep_block(build_engines(m, SIZE, True), args.threads)})
            for m in args.models]
    if "resnet18" in args.models:
        data["schemes"] = cached(f"schemes-resnet18-{plan}", args.fresh,
                                 lambda: schemes_block("resnet18", args.threads, args.iterations))
    if not args.no_demo:
        data["demo"] = cached(f"demo-{plan}", args.fresh, lambda: demo_student(args.threads, args.rounds, args.iterations))
    data["estimator"] = estimator_section(data, args.threads, lambda m: WORK / f"{m}-{SIZE}" / "model-fp32.onnx")
    data["load_average"]["end"] = [round(v, 2) for v in os.getloadavg()]
    data["provenance"] = provenance()
    data["versions"] = versions()
    data["checks"] = checks(data)
    dump_json(RESULTS / "inference.json", data)
    artifacts.write_text(RESULTS / "inference.md", markdown(data))
    for text, ok in data["checks"]:
        print(f"{'pass' if ok else 'FAIL'}: {text}")
    print(f"wrote {RESULTS / 'inference.md'}")


def cached(key: str, fresh: bool, make: Callable[[], dict]) -> dict:
    """A block's result from .cache/inference/rows/<key>.json, or measured now and stored there."""
    path = WORK / "rows" / f"{key}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    began = time.time()
    result = make()
    result["seconds"] = round(time.time() - began, 1)
    dump_json(path, result)
    print(f"{key}: {result['seconds']} s", flush=True)
    return result


def versions() -> dict[str, str | None]:
    from edgeft.export.base import library_version

    return {name: library_version(name) for name in ("onnxruntime", "openvino", "nncf", "onnx", "torch", "timm", "numpy")}


if __name__ == "__main__":
    main()
