"""Latency benchmark: the estimator's error on this host, the profiler against an independent loop,
and the demo student's latency/throughput per backend x precision.

    python tools/bench_latency.py [--threads 1] [--demo-run DIR | --no-demo]

1. Estimator error: resnet18, mobilenetv3_small_100 and the teacher resnetv2_50x1_bit (timm, random
   weights, torch.onnx at 224 px, batch 1) are measured with `edgeft.runtime.profile` on ONNX Runtime
   and OpenVINO and estimated with `edgeft.targets.estimate` for the host: (a) calibrated on the
   synthetic networks of `edgeft.runtime.calibrate` only, so no benchmark model is in the fit;
   (b) on those networks plus the other two benchmark models (leave-one-out). Error = |estimate - measured| / measured.
2. Acceptance: `edgeft profile ONNX --target host` (the CLI, a subprocess) against a plain
   onnxruntime loop on the same model, batch and threads, run before and after it: p50 ratio <= 1.5.
3. The demo student (`edgeft compress --teacher demo --data demo`, the run tools/bench_export.py
   makes): onnx and openvino at fp32/fp16/int8 plus the PyTorch student, measured on the host.
Writes results/latency.json and results/latency.md.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, dump_json, provenance  # noqa: E402
from make_anchor_models import export_onnx  # noqa: E402

from edgeft import artifacts  # noqa: E402
from edgeft.artifacts import ExportManifest, RunDir  # noqa: E402
from edgeft.runtime.calibrate import host_points  # noqa: E402
from edgeft.runtime.dispatch import profile_on_target  # noqa: E402
from edgeft.runtime.profile import ProfileConfig, profile_engine  # noqa: E402
from edgeft.targets.estimate import estimate, fit, roofline_ms  # noqa: E402
from edgeft.targets.graph import graph_costs  # noqa: E402
from edgeft.targets.host import host_target  # noqa: E402

MODELS = ("resnet18", "mobilenetv3_small_100", "resnetv2_50x1_bit")
BACKENDS = ("onnxruntime", "openvino")
IMAGE_SIZE = 224
MAX_RATIO = 1.5
DEMO_RUN = CACHE / "export" / "demo"  # shared with tools/bench_export.py


def estimator_error(models: dict[str, Path], threads: int, cfg: ProfileConfig) -> list[dict]:
    """Measured vs estimated p50 per model and backend (synthetic-calibrated and leave-one-out)."""
    host = host_target(threads)
    rows = []
    for backend in BACKENDS:
        synthetic = host_points(backend, threads)
        cal = fit(synthetic, "host-measured", "synthetic networks")
        measured = {m: profile_engine(p, backend, cfg)["latency_ms"]["p50"] for m, p in models.items()}
        costs = {m: graph_costs(p) for m, p in models.items()}
        for name, path in models.items():
            est = estimate(path, host, backend, "fp32", calibration=cal)["latency_ms"]["p50"]
            others = [(roofline_ms(costs[o], host, "fp32", 1), sum(c.kernel for c in costs[o]), measured[o])
                      for o in models if o != name]
            loo = fit(synthetic + others, "leave-one-out", "synthetic networks + the other benchmark models")
            loo_ms = estimate(path, host, backend, "fp32", calibration=loo)["latency_ms"]["p50"]
            rows.append({"model": name, "backend": backend, "gflops": round(sum(c.flops for c in costs[name]) / 1e9, 3),
                         "measured_ms": measured[name], "estimated_ms": est, "error": _err(est, measured[name]),
                         "loo_estimated_ms": loo_ms, "loo_error": _err(loo_ms, measured[name]),
                         "calibration": {"efficiency": cal.efficiency, "overhead_ms": cal.overhead_ms,
                                         "memory_efficiency": cal.memory_efficiency, "fit_error": cal.fit_error}})
            print(f"{backend} {name}: measured {measured[name]:.2f} ms, estimated {est:.2f} ({rows[-1]['error']:.0%}), "
                  f"leave-one-out {loo_ms:.2f} ({rows[-1]['loo_error']:.0%})")
    return rows


def _err(estimate_ms: float, measured_ms: float) -> float:
    return round(abs(estimate_ms - measured_ms) / measured_ms, 4)


def independent_p50(path: Path, threads: int, batch: int = 1, runs: int = 50) -> float:
    """A plain onnxruntime timing loop, written without edgeft: median ms of `runs` after 10 warm-ups."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((batch, *inp.shape[1:])).astype(np.float32)
    for _ in range(10):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def acceptance(path: Path, threads: int) -> dict:
    """`edgeft profile` p50 vs the independent loop (mean of one loop before and one after)."""
    before = independent_p50(path, threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.json"
        command = [sys.executable, "-m", "edgeft", "profile", str(path), "--target", "host", "--threads", str(threads),
                   "--no-sweep", "--no-layers", "--json", str(out)]
        subprocess.run(command, check=True, capture_output=True)
        p50 = json.loads(out.read_text())[0]["latency_ms"]["p50"]
    after = independent_p50(path, threads)
    loop = (before + after) / 2
    ratio = max(p50, loop) / min(p50, loop)
    print(f"acceptance {path.name}: edgeft p50 {p50:.3f} ms, independent loop {loop:.3f} ms, ratio {ratio:.2f}")
    return {"engine": path.name, "threads": threads, "batch": 1, "edgeft_p50_ms": p50, "independent_p50_ms": round(loop, 4),
            "independent_runs_ms": [round(before, 4), round(after, 4)], "ratio": round(ratio, 3), "passed": ratio <= MAX_RATIO}


def demo_matrix(run: Path, threads: int) -> list[dict]:
    """Every engine of the demo run (exported when absent) measured on the host."""
    from edgeft.export import export_run

    if not RunDir(run).export_manifest.exists():
        export_run(run, ("onnx", "openvino"), ("fp32", "fp16", "int8"))
    records = profile_on_target(run, "host", cfg=ProfileConfig(threads=threads))
    sizes = {r["path"]: r["size_bytes"] for r in ExportManifest.read(run).engines}
    return [{"engine": r["engine"], "backend": r["backend"], "precision": r["precision"], "accuracy": r["accuracy"],
             "size_mb": round(sizes.get(r["engine"], 0) / 1e6, 2) or None, **r["latency_ms"],
             "images_per_s_batch1": r["throughput"]["images_per_s"], "best": r["throughput"]["best"],
             "first_inference_ms": r["first_inference_ms"], "peak_rss_mb": r["memory"]["peak_rss_mb"]}
            for r in records]


def markdown(data: dict) -> str:
    prov = data["provenance"]
    lines = ["# Latency benchmark", "", f"`{prov['command']}` · {prov['hardware']['cpu']} · threads {data['threads']} · "
             f"commit {prov['commit']}", "", "Written by tools/bench_latency.py; numbers are measured on a shared "
             f"2-core CPU (load average {data['load_average_at_end']} at the end), so expect run-to-run noise.", "", "## Estimator error on the host", "",
             f"timm models with random weights, torch.onnx at {IMAGE_SIZE} px, batch 1, fp32. *synthetic*: calibrated "
             "only on edgeft's synthetic networks; *leave-one-out*: on those plus the other two models.", "",
             "| model | GFLOPs | backend | measured p50 ms | estimated ms | error | leave-one-out ms | error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["estimator"]:
        lines.append(f"| {r['model']} | {r['gflops']} | {r['backend']} | {r['measured_ms']:.2f} | {r['estimated_ms']:.2f} | "
                     f"{r['error']:.0%} | {r['loo_estimated_ms']:.2f} | {r['loo_error']:.0%} |")
    errors = [r["error"] for r in data["estimator"]]
    lines += ["", f"Mean error (synthetic calibration): {np.mean(errors):.0%}; leave-one-out: "
              f"{np.mean([r['loo_error'] for r in data['estimator']]):.0%}.", "", "## Profiler vs an independent loop", "",
              "| engine | threads | edgeft p50 ms | independent p50 ms | ratio | within 1.5x |", "|---|---|---|---|---|---|"]
    for a in data["acceptance"]:
        lines.append(f"| {a['engine']} | {a['threads']} | {a['edgeft_p50_ms']:.3f} | {a['independent_p50_ms']:.3f} | "
                     f"{a['ratio']:.2f} | {'yes' if a['passed'] else 'NO'} |")
    lines += ["", "## Demo student on the host (measured)", ""]
    if data.get("demo"):
        lines += ["| engine | backend | precision | top-1 | MB | p50 ms | p90 ms | p99 ms | img/s batch 1 | best img/s (batch) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["demo"]:
            acc = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else ""
            best = f"{r['best']['images_per_s']:.0f} ({r['best']['batch']})" if r["best"] else ""
            lines.append(f"| {r['engine']} | {r['backend']} | {r['precision']} | {acc} | {r['size_mb'] or ''} | "
                         f"{r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {r['images_per_s_batch1']:.0f} | {best} |")
    else:
        lines.append(data.get("demo_skipped", "not run"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--demo-run", type=Path, default=DEMO_RUN)
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    cfg = ProfileConfig(threads=args.threads, iterations=20, seconds=3.0, sweep=False, layers=False)
    data: dict = {"threads": args.threads, "image_size": IMAGE_SIZE, "profile_config": asdict(cfg)}
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-") as tmp:
        models = {m: export_onnx(m, Path(tmp) / f"{m}.onnx", IMAGE_SIZE) for m in MODELS}
        data["estimator"] = estimator_error(models, args.threads, cfg)
        data["acceptance"] = [acceptance(models["resnet18"], args.threads)]
    demo_onnx = args.demo_run / "engines" / "onnx" / "model-fp32.onnx"
    if not args.no_demo and (args.demo_run / "student" / "card.json").exists():
        data["demo"] = demo_matrix(args.demo_run, args.threads)
        data["acceptance"].insert(0, acceptance(demo_onnx, args.threads))
    else:
        data["demo_skipped"] = f"skipped: no demo run at {args.demo_run} (run tools/bench_export.py --demo first)"
    data["provenance"] = provenance()
    data["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]  # the CPU is shared: context for the noise
    dump_json(RESULTS / "latency.json", data)
    artifacts.write_text(RESULTS / "latency.md", markdown(data))
    print(f"wrote {RESULTS / 'latency.md'}")


if __name__ == "__main__":
    main()
