"""Guard-rails benchmark: each precision's measured speed-up on the host and whether it is kept.

    python tools/bench_guardrails.py                      # the demo run and the benchmark student
    python tools/bench_guardrails.py --run NAME=DIR [--run NAME=DIR ...] [--threads 1]

Each run is copied (engines, student, manifests; no checkpoints) to .cache/guardrails/<name>
so the source stays untouched, exported (onnx + openvino at fp32/fp16/int8) when it has no
engines, profiled on the host per backend with `edgeft.runtime.dispatch.profile_on_target`
in several interleaved rounds whose samples are pooled per engine (so every engine sees the
same spread of background load), and judged by `edgeft.precision_policy` (kept only at >= 1.02x over the next higher kept
precision, batch-1 p50). results/guardrails.{json,md} hold per format x precision: p50, p99,
min, the speed-up and decision, the same ratio on min latency (a load-robust check), the
accuracy drop vs PyTorch fp32, command, seed, hardware and versions.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, ROOT, dump_json, provenance  # noqa: E402

from edgeft import artifacts  # noqa: E402
from edgeft.artifacts import ExportManifest, RunDir  # noqa: E402
from edgeft.export import export_run  # noqa: E402
from edgeft.export.base import library_version  # noqa: E402
from edgeft.figures import throughput_json  # noqa: E402
from edgeft.modelcard import write_cards  # noqa: E402
from edgeft.precision_policy import MIN_SPEEDUP, apply_policy  # noqa: E402
from edgeft.runtime.dispatch import profile_on_target, save_records  # noqa: E402
from edgeft.runtime.profile import ProfileConfig, stats  # noqa: E402

RUNS = {"demo": ROOT / ".cache" / "export" / "demo-final", "stl-resnet18": ROOT / ".cache" / "bench" / "stl" / "seed0"}
WORK = CACHE / "guardrails"
BACKENDS = ("onnxruntime", "openvino")


def working_copy(name: str, source: Path) -> Path:
    """A fresh copy of the run without checkpoints, caches or engines (the source is never written).

    Engines are always rebuilt with the current exporter (static batch 1, fingerprints), so the
    figures describe what `edgeft export` produces today.
    """
    dest = WORK / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("checkpoints", "cache", "profiles", "cards", "report*",
                                                                  "engines", "export.json"))
    return dest


def pooled_profiles(run: Path, cfg: ProfileConfig, rounds: int) -> list[dict]:
    """`rounds` interleaved host profiles of every engine; each record's samples pooled over the rounds."""
    samples: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        records = [r for backend in BACKENDS for r in profile_on_target(run, "host", backend, cfg)]
        for r in records:
            samples.setdefault((r["format"], r["precision"]), []).extend(r["samples_ms"])
    for r in records:
        pooled = samples[(r["format"], r["precision"])]
        r.update(latency_ms=stats(pooled), samples_ms=pooled, iterations=len(pooled), rounds=rounds)
        r["throughput"] = throughput_json(cfg.batch, r["latency_ms"]["p50"], r["throughput"]["sweep"])
    save_records(run, "host", records)
    return records


def bench_run(name: str, source: Path, cfg: ProfileConfig, rounds: int) -> dict:
    """Profiles one run's engines on the host and returns its rows with the decisions."""
    run = working_copy(name, source)
    if not RunDir(run).export_manifest.exists():
        export_run(run, ["onnx", "openvino"], ["fp32", "fp16", "int8"])
    began = time.time()
    records = pooled_profiles(run, cfg, rounds)
    decisions = {(d.format, d.precision): d for d in apply_policy(run, "host")}
    write_cards(run, ["host"])
    exports = ExportManifest.read(run).by_key()
    mins = {(r["format"], r["precision"]): r["latency_ms"]["min"] for r in records}
    rows = []
    for r in records:
        key = (r["format"], r["precision"])
        d, exp = decisions[key], exports.get(key, {})
        ratio_min = mins[(d.format, d.vs)] / mins[key] if d.vs else None
        rows.append({
            "format": r["format"], "backend": r["backend"], "precision": r["precision"],
            "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "min_ms": r["latency_ms"]["min"],
            "iterations": r["iterations"], "vs": d.vs, "speedup_p50": d.speedup,
            "speedup_min": round(ratio_min, 4) if ratio_min else None, "kept": d.kept, "reason": d.reason,
            "accuracy": exp.get("accuracy"), "top1_drop_points": round(100 * (exp["reference_accuracy"] - exp["accuracy"]), 2)
            if exp.get("accuracy") is not None else None,
        })
    card = artifacts.read_json(run / "student" / "card.json")
    return {"name": name, "source": str(source), "copy": str(run), "student": card["arch"],
            "input_size": card["input_size"], "seconds": round(time.time() - began, 1), "rows": rows,
            "card": str((run / "cards" / "host.md").relative_to(ROOT))}


def _f(value: object, digits: int = 2, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if isinstance(value, (int, float)) else "—"


def _agrees(row: dict) -> str:
    """Whether the ratio of the fastest runs gives the same keep/drop call as the p50 ratio."""
    if not row["vs"] or row["speedup_min"] is None:
        return ""
    return "yes" if (row["speedup_min"] >= MIN_SPEEDUP) == row["kept"] else "**no** (load?)"


def markdown(result: dict) -> str:
    """results/guardrails.md."""
    prov, cfg = result["provenance"], result["profile"]
    lines = ["# Guard rails: a precision is kept only where it is measured faster", "",
             f"Rule: at batch 1, a lower precision's p50 must be >= {MIN_SPEEDUP}x faster than the next higher kept "
             "precision of the same format on the same target (fp16 vs fp32; int8 vs fp16, or fp32 where fp16 is "
             "absent or dropped); otherwise export.json marks it `kept: false` with `dropped_because` and the model "
             "card never recommends it. The engine file stays (the decision is per target).", "",
             f"**Timings taken under load**: {result['load']} Treat small ratios as noisy; `speed-up (min)` repeats the "
             "ratio on the fastest run, which load inflates least.", "",
             f"Profile: {result['rounds']} interleaved rounds (samples pooled per engine), each with "
             f"{cfg['threads'] or 'default'} thread(s), warm-up {cfg['warmup']}, >= {cfg['iterations']} runs and "
             f">= {cfg['seconds']} s per engine; compute only (engine.infer on a prepared batch).", ""]
    for run in result["runs"]:
        size = "×".join(map(str, run["input_size"]))
        lines += [f"## {run['name']}: {run['student']} at {size} ({run['source']})", "",
                  "| format | precision | p50 ms | p99 ms | min ms | runs | speed-up (p50) | speed-up (min) | kept | "
                  "same call on min | top-1 drop vs fp32 (points) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            versus = f"{_f(r['speedup_p50'])}x vs {r['vs']}" if r["vs"] else "baseline"
            lines.append(f"| {r['format']} ({r['backend']}) | {r['precision']} | {_f(r['p50_ms'], 3)} | {_f(r['p99_ms'], 3)} | "
                         f"{_f(r['min_ms'], 3)} | {r['iterations']} | {versus} | "
                         f"{_f(r['speedup_min'], 2, 'x') if r['vs'] else ''} | {'yes' if r['kept'] else '**no**'} | "
                         f"{_agrees(r)} | {_f(r['top1_drop_points'])} |")
        lines += [""] + [f"- {r['format']} {r['precision']}: {r['reason']}" for r in run["rows"] if r["vs"]]
        lines += ["", f"Host model card: `{run['card']}`.", ""]
    lines += ["## Provenance", "", f"- command: `{prov['command']}`", f"- seed: {prov['seed']}",
              f"- hardware: {prov['hardware']}", f"- versions: {prov['versions']}", f"- commit: {prov['commit']}",
              f"- generated: {result['generated']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="NAME=DIR of a run (repeatable) [demo and stl-resnet18].")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved profiling rounds, samples pooled.")
    parser.add_argument("--iterations", type=int, default=30, help="Timed runs per engine and round, at least.")
    parser.add_argument("--seconds", type=float, default=0.6, help="Timed seconds per engine and round, at least.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "guardrails")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.run) if args.run else RUNS
    cfg = ProfileConfig(warmup=args.warmup, iterations=args.iterations, seconds=args.seconds, threads=args.threads,
                        sweep=False, layers=False)
    prov = provenance(seed=0)
    prov["versions"].update({n: library_version(n) for n in ("onnxruntime", "openvino", "edgeft")})
    load = os.getloadavg()
    result = {"provenance": prov, "profile": {k: getattr(cfg, k) for k in ("threads", "warmup", "iterations", "seconds")},
              "load": (f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on "
                       f"{os.cpu_count()} cores at the start; a long training benchmark shared the CPU."),
              "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rounds": args.rounds, "runs": [bench_run(name, Path(source), cfg, args.rounds) for name, source in runs.items()]}
    dump_json(args.out.with_suffix(".json"), result)
    artifacts.write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
