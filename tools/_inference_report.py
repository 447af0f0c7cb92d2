"""results/inference.md and the acceptance checks of tools/bench_inference.py, and the estimator's
leave-one-model-out error computed from its measurements (no timing here)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

RATIO_BAND = (0.9, 1.1)
MIN_INT8_SPEEDUP, MAX_INT8_DROP, MAX_ESTIMATE_ERROR = 2.5, 1.0, 0.25


def _point(layers, target, precision: str, measured: float):
    from edgeft.targets.estimate import roofline_ms

    return roofline_ms(layers, target, precision, 1), sum(c.kernel for c in layers), measured


def _loo(points: dict[str, tuple], layers: dict[str, list], target, precision: dict[str, str], label: str) -> list[dict]:
    """Leave-one-out: each point predicted by a calibration fitted to the others."""
    from edgeft.targets.estimate import fit, predict

    rows = []
    for name, point in points.items():
        cal = fit([p for other, p in points.items() if other != name], label, "the other points")
        ms, _ = predict(layers[name], target, precision[name], 1, cal)
        rows.append({"point": name, "measured_ms": round(point[2], 3), "estimated_ms": round(ms, 3),
                     "error": round(abs(ms - point[2]) / point[2], 4)})
    return rows


def estimator_section(data: dict, threads: int, fp32_onnx: Callable[[str], Path]) -> dict[str, Any]:
    """Leave-one-model-out error of edgeft's estimator on this host (the bench's fp32 p50s) and on public anchors.

    `fp32_onnx` names the fp32 ONNX of a benchmark model (its graph is what the estimator reads).
    """
    from edgeft.targets import TARGETS, get_target
    from edgeft.targets.estimate import ANCHOR_MODELS, anchor_calibration, predict
    from edgeft.targets.graph import LayerCost, graph_costs
    from edgeft.targets.host import host_target

    host = host_target(threads)
    layers = {b["model"]: graph_costs(fp32_onnx(b["model"])) for b in data["models"]}
    out: dict[str, Any] = {"host": {}, "anchors": {}}
    for backend in ("onnxruntime", "openvino"):
        points = {b["model"]: _point(layers[b["model"]], host, "fp32",
                                     next(r["edgeft"]["p50"] for r in b["rows"] if r["engine"] == f"{backend} fp32"))
                  for b in data["models"]}
        rows = _loo(points, layers, host, {m: "fp32" for m in points}, "host-measured")
        out["host"][backend] = {"rows": rows, "mean_error": round(float(np.mean([r["error"] for r in rows])), 4)}
    anchor_layers = {name: [LayerCost.from_row(r) for r in model["layers"]]
                     for name, model in json.loads(ANCHOR_MODELS.read_text())["models"].items()}
    for name in TARGETS.names():
        target = get_target(name)
        usable = [a for a in target.anchors if a.model in anchor_layers]
        if len(usable) < 3:
            continue
        points = {f"{a.model} {a.backend} {a.precision}": _point(anchor_layers[a.model], target, a.precision,
                                                                a.latency_ms) for a in usable}
        keyed = {f"{a.model} {a.backend} {a.precision}": a for a in usable}
        rows = _loo(points, {k: anchor_layers[a.model] for k, a in keyed.items()}, target,
                    {k: a.precision for k, a in keyed.items()}, "anchors")
        out["anchors"][name] = {"rows": rows, "mean_error": round(float(np.mean([r["error"] for r in rows])), 4)}
    launch = {}
    for name in ("jetson-orin-nano-8gb", "jetson-agx-xavier"):
        target = get_target(name)
        cal = anchor_calibration(target, "tensorrt", "fp16")
        ms = {m: predict(anchor_layers[m], target, "fp16", 1, cal)[0] for m in ("mobilenetv2_100", "resnet18")}
        measured = {a.model: a.latency_ms for a in target.anchors if a.precision == "fp16"}
        launch[name] = {"estimated_ms": {m: round(v, 3) for m, v in ms.items()},
                        "estimated_ratio": round(ms["mobilenetv2_100"] / ms["resnet18"], 3),
                        "measured_ratio": round(measured["mobilenetv2_100"] / measured["resnet18"], 3)
                        if "mobilenetv2_100" in measured else None}
    out["launch_bound"] = launch
    return out


def checks(data: dict) -> list[tuple[str, bool]]:
    """The issue's acceptance lines, judged on this run's figures."""
    out = []
    for block in data["models"]:
        rows = {r["engine"]: r for r in block["rows"]}
        if block["model"] in ("resnet18", "resnet50"):
            speedup = speedups(block["rows"])
            for backend in ("onnxruntime", "openvino"):
                x = speedup[f"{backend} int8"]
                out.append((f"{block['model']} {backend} int8 {x:.2f}x fp32 (>= {MIN_INT8_SPEEDUP}x; `edgeft profile`, "
                            "fresh process)", x >= MIN_INT8_SPEEDUP))
            ours, bar = rows["onnxruntime int8"]["edgeft"]["p50"], rows["onnxruntime int8 plain"]["edgeft"]["p50"]
            out.append((f"{block['model']} onnxruntime int8 {ours:.2f} ms vs plain quantize_static {bar:.2f} ms "
                        "(no slower)", ours <= bar))
    for block in [*data["models"], *([data["demo"]] if data.get("demo") else [])]:
        name = block.get("model") or f"demo {block['arch']}"
        for r in block["rows"]:
            for key in ("ratio_independent", "ratio_benchmark_app"):
                if key in r:
                    out.append((f"{name} {r['engine']} edgeft/{key.split('_', 1)[1]} p50 {r[key]:.3f} in "
                                f"[{RATIO_BAND[0]}, {RATIO_BAND[1]}]", RATIO_BAND[0] <= r[key] <= RATIO_BAND[1]))
    for backend, block in data["estimator"]["host"].items():
        out.append((f"estimator on the host, {backend} fp32, mean leave-one-model-out error {block['mean_error']:.0%} "
                    f"over {len(block['rows'])} models (<= {MAX_ESTIMATE_ERROR:.0%})", block["mean_error"] <= MAX_ESTIMATE_ERROR))
    for name, block in data["estimator"]["launch_bound"].items():
        out.append((f"{name}: mobilenetv2_100 estimated at {block['estimated_ratio']:.2f}x resnet18's latency "
                    "(batch 1; not far faster: >= 0.5x)", block["estimated_ratio"] >= 0.5))
    if data.get("demo"):
        for a in data["demo"]["accuracy"]:
            if a["engine"].endswith("int8"):
                out.append((f"demo {a['engine']} accuracy drop {a['drop_points']:.2f} points (<= {MAX_INT8_DROP})",
                            a["drop_points"] <= MAX_INT8_DROP))
    return out


def speedups(rows: list[dict]) -> dict[str, float]:
    """Each engine's speed-up over its backend's fp32, on the CLI p50s: `edgeft profile ENGINE` alone in a
    fresh process, as a user measures it (side-by-side chunks alternate two sessions of the same model, which
    doubles its weights in cache and costs an INT8 engine whose weights fit alone 10-15% that a deployment does
    not pay)."""
    fp32 = {r["backend"]: r["cli"]["p50"] for r in rows if r["precision"] == "fp32"}
    return {r["engine"]: round(fp32[r["backend"]] / r["cli"]["p50"], 2) for r in rows}


def _speed_table(rows: list[dict]) -> list[str]:
    fastest = {r["backend"]: r["edgeft"]["min"] for r in rows if r["precision"] == "fp32"}
    speedup = speedups(rows)
    lines = ["| engine | MB | p50 ms | p90 | p99 | min | img/s | × fp32 | × fp32 by min | independent p50 | "
             "edgeft/indep. | edgeft/benchmark_app | CLI p50 | first inference ms | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, i, c = r["edgeft"], r["independent"], r["cli"]
        lines.append(f"| {r['engine']} | {r['size_mb']} | {e['p50']:.2f} | {e['p90']:.2f} | {e['p99']:.2f} | "
                     f"{e['min']:.2f} | {r['images_per_s']:.0f} | {speedup[r['engine']]:.2f} | "
                     f"{fastest[r['backend']] / e['min']:.2f} | {i['p50']:.2f} | "
                     f"{r['ratio_independent']:.3f} | {r.get('ratio_benchmark_app', '')} | {c['p50']:.2f} | "
                     f"{c['first_inference_ms']:.0f} | {c['peak_rss_mb']} |")
    return lines


def markdown(data: dict) -> str:
    prov, cpu = data["provenance"], data["cpu"]
    vnni = "has VNNI" if cpu["vnni"] else "has NO VNNI: the INT8 ratios below are what a CPU without it gets"
    lines = ["# Inference at the deployed resolution", "",
             f"`{prov['command']}` · {prov['hardware']['cpu']} ({cpu['cores']} cores, {vnni}) · {data['threads']} threads · "
             f"commit {prov['commit']} · load average {data['load_average']['start']} at the start, "
             f"{data['load_average']['end']} at the end", "",
             f"CPU flags: {', '.join(cpu['flags'])}. edgeft's ONNX Runtime INT8 scheme here: **{cpu['int8_scheme']['name']}** "
             f"({cpu['int8_scheme']['why']}).", "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.", "",
             "Written by tools/bench_inference.py, with the machine's other jobs paused (load average above). "
             "*p50 … img/s, × fp32*: edgeft's engine "
             "(`edgeft.runtime.load` + `edgeft.runtime.profile.time_loop`, what `edgeft profile` times) side by side with "
             f"an *independent* loop written in the bench (plain onnxruntime / openvino calls): one engine at a time, "
             f"only its two sessions open, {data['chunk']} edgeft runs then {data['chunk']} independent ones (order "
             "swapped every other step), each after a 50-ms pause and one untimed run, so both timers share the load "
             "and neither times the other's spinning workers; "
             f"{data['iterations']} runs each. *edgeft/benchmark_app*: OpenVINO's tool (`-hint none "
             f"-nthreads {data['threads']} -nstreams 1 -nireq 1 -api sync -b 1 -infer_precision f32`; it takes -nthreads "
             "only with -hint none, and one stream with one request is what its latency hint picks) against an edgeft "
             f"chunk of as many runs just before it, median of {data['rounds']} per-round ratios. *CLI*: `edgeft profile "
             "ENGINE --threads N --no-sweep --no-layers` once in a fresh process (its p50, time to first inference "
             "after load, peak RSS of that process). *int8 plain*: `quant_pre_process` + "
             "`quantize_static(QDQ, per_channel=True)` with onnxruntime's defaults (int8 activations in 1.32). "
             "*× fp32* is on the CLI p50s (the acceptance figure: each engine alone in a fresh process, as a user "
             "runs `edgeft profile`); the side-by-side chunks alternate two sessions of the same model, which "
             "doubles its weights in the caches and costs an INT8 engine whose weights fit alone (resnet18: 11.8 MB) "
             "10-15% that a deployment does not pay. *× fp32 by min* is on the side-by-side fastest runs.", ""]
    for block in data["models"]:
        lines += [f"## {block['model']} — {block['size']} px, batch 1, random weights", "", *_speed_table(block["rows"]), ""]
    if data.get("sweep"):
        lines += ["## Throughput sweep (dynamic-batch engines, edgeft.runtime.profile)", "",
                  "| model | engine | " + " | ".join(f"img/s @ {b}" for b in data["sweep_batches"]) + " |",
                  "|---|---|" + "---|" * len(data["sweep_batches"])]
        for block in data["sweep"]:
            by_engine: dict[str, dict[int, float]] = {}
            for p in block["rows"]:
                by_engine.setdefault(p["engine"], {})[p["batch"]] = p["images_per_s"]
            for engine, points in by_engine.items():
                lines.append(f"| {block['model']} | {engine} | " + " | ".join(f"{points.get(b, 0):.0f}" for b in data["sweep_batches"]) + " |")
        lines.append("")
    demo = data.get("demo")
    if demo:
        size = demo["input_size"][-1]
        lines += [f"## Real task: the demo student ({demo['arch']}, {demo['method']}, teacher {demo['teacher']}, "
                  f"its own resolution {size} px)", "",
                  "| engine | held-out images | PyTorch top-1 | engine top-1 | drop (points) | top-1 agreement | int8 scheme |",
                  "|---|---|---|---|---|---|---|"]
        for a in demo["accuracy"]:
            lines.append(f"| {a['engine']} | {a['images']} | {a['pytorch_top1']:.2%} | {a['engine_top1']:.2%} | "
                         f"{a['drop_points']:+.2f} | {a['top1_agreement']:.2%} | {(a['scheme'] or {}).get('name', '')} |")
        lines += ["", f"Speed at {size} px, batch 1:", "", *_speed_table(demo["rows"]), ""]
    est = data["estimator"]
    lines += ["## Estimator (edgeft.targets.estimate), leave one model out", "",
              f"Host: the fp32 p50s of the tables above ({data['size']} px, batch 1, {data['threads']} threads); each model is "
              "predicted by a calibration fitted to the other models only.", "",
              "| backend | model | measured ms | estimated ms | error |", "|---|---|---|---|---|"]
    for backend, block in est["host"].items():
        lines += [f"| {backend} | {r['point']} | {r['measured_ms']:.2f} | {r['estimated_ms']:.2f} | {r['error']:.0%} |"
                  for r in block["rows"]]
        lines.append(f"| {backend} | **mean** | | | **{block['mean_error']:.0%}** |")
    lines += ["", "Public anchors (targets/devices/*.yaml, from ECOSYSTEM.md): each anchor predicted from the "
              "device's other anchors.", "", "| device | anchor | published ms | estimated ms | error |",
              "|---|---|---|---|---|"]
    for name, block in est["anchors"].items():
        lines += [f"| {name} | {r['point']} | {r['measured_ms']:.2f} | {r['estimated_ms']:.2f} | {r['error']:.0%} |"
                  for r in block["rows"]]
        lines.append(f"| {name} | **mean** | | | **{block['mean_error']:.0%}** |")
    lines += ["", "Launch-bound case (TensorRT fp16, batch 1, all anchors of the device):", "",
              "| device | mobilenetv2_100 ms | resnet18 ms | estimated ratio | published ratio |", "|---|---|---|---|---|"]
    for name, block in est["launch_bound"].items():
        e = block["estimated_ms"]
        lines.append(f"| {name} | {e['mobilenetv2_100']:.2f} | {e['resnet18']:.2f} | {block['estimated_ratio']:.2f} | "
                     f"{block['measured_ratio'] if block['measured_ratio'] is not None else 'no anchor'} |")
    lines += ["", "## What the remaining differences are", "",
              "- edgeft and the independent loop make the same calls (one onnxruntime `session.run` / one OpenVINO "
              "`infer` per run, same threads and options); edgeft adds a shape check and `ascontiguousarray`, "
              "microseconds. Two earlier differences are gone: `edgeft profile` sampled memory from a thread every "
              "2 ms, which slowed 2-thread engines on this 2-core host 1.6–1.75× (alternated runs, thread paused vs "
              "running; now the kernel's resettable peak RSS, no thread), and the OpenVINO backend copied each input "
              "into a new tensor (now shared).",
              "- benchmark_app reports OpenVINO's own per-request latency, measured inside the runtime, so the Python "
              "call around it (argument wrapping, the result dict, the output copy: 0.1–0.5 ms here) is outside its "
              "figure and inside edgeft's; on 1–4 ms engines (MobileNet INT8) that alone is 10–50 %. It also feeds an "
              "image input as u8 through an added conversion unless told otherwise; the bench passes `-ip f32` so that "
              "it runs the graph edgeft runs.",
              "- Three bench artifacts are gone: with every engine's two sessions open at once, the workers of the "
              "engine timed just before still spun while the next ran (2-5 ms engines 10-40% slower, either side); "
              "without a pause between chunks the other session's spinning workers were timed into the next chunk; and "
              "the independent OpenVINO loop copied its input and outputs, which edgeft's backend does not (now both "
              "use the zero-copy call).",
              "- What is left: this is a 2-vCPU virtual machine, and on 1-5 ms engines a p50 of 100 runs in chunks of 5 "
              "moves by about 10% between runs of the bench (another quiet run had other engines outside the band, "
              "in both directions: edgeft faster as often as slower). Ratios outside the band within one table, "
              "same files and options, are that noise, not a bias."]
    lines += ["", "## Checks", ""] + [f"- {'pass' if ok else 'FAIL'}: {text}" for text, ok in data["checks"]]
    if data.get("schemes"):
        block = data["schemes"]
        lines += ["", f"## ONNX Runtime INT8 schemes tried ({block['model']}, {block['size']} px, batch 1, "
                  f"{data['threads']} threads, this CPU)", "",
                  "What `edgeft/export/quantize.py`'s `cpu_scheme` chooses from: each built from the same fp32 ONNX "
                  "and calibration images, timed by the independent loop, one session open at a time like the tables above. "
                  "ONNX Runtime fuses the Q/DQ pairs into QLinearConv/QGemm at session load (ORT_ENABLE_ALL, its "
                  "default), so nothing is pre-optimised on disk.", "",
                  "| scheme | p50 ms | min ms | speed-up vs fp32 |", "|---|---|---|---|"]
        lines += [f"| {r['scheme']} | {r['p50']:.2f} | {r['min']:.2f} | {r['speedup_vs_fp32']:.2f} |"
                  for r in block["rows"]]
        lines.append("")
    return "\n".join(lines) + "\n"


