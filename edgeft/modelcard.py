"""A model card per target (Markdown + JSON), after Arm's Raspberry Pi 5 model cards.

`<run>/cards/<target>.{md,json}`: the model and task, top-1 vs PyTorch fp32 per engine,
p50/p90/p99, time to first inference, peak memory, img/s (edgeft.figures), what each number
covers (compute only, or end-to-end with preprocessing), threads, batch and versions, and
whether the figures were measured (the host, or a device's agent) or estimated (everything
else). Only an engine validated against PyTorch (a row of the export manifest, or the validated ONNX
an estimate was made from) is ever recommended; a refused precision is listed with its reason
only, never with figures, and estimates of engines not built here say so. Engines dropped as not faster (edgeft.precision_policy) are listed with
the reason and are never the recommended engine either.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from edgeft import artifacts
from edgeft.artifacts import ProfileManifest, RunDir
from edgeft.errors import EdgeftError
from edgeft.figures import AT_BATCH, BEST, DEFINITION, Throughput, batch_of, throughput
from edgeft.precision_policy import ORDER, apply_policy, dropped
from edgeft.runtime.dispatch import profile_on_target
from edgeft.runtime.profile import ProfileConfig
from edgeft.targets import TARGETS, get_target
from edgeft.validated import NOT_BUILT, Exports

log = logging.getLogger(__name__)

SCHEMA = "edgeft-model-card/1"
MEASURED_NOTE = ("Measured on this machine: warm-up, then timed runs until both the iteration and the time minimum; "
                 "every raw sample is in profiles/{target}.json.")
ESTIMATED_NOTE = ("Estimated, not measured: a roofline over the ONNX graph against the target's published peaks, "
                  "calibrated as each engine's `calibration` says. Accuracy is measured on the host (same engine "
                  "precision); latency is not. Measure with `edgeft profile RUN --target {target} --remote URL`.")
DASH = "—"


def _engine(record: dict, exports: Exports) -> dict[str, Any]:
    """One engine's figures on the target, joined with its export validation."""
    exp, status = exports.validation(record)
    lat = record.get("latency_ms") or {}
    measured = record.get("label") == "measured"
    accuracy, reference = record.get("accuracy"), exp.get("reference_accuracy")
    pre = record.get("preprocess_ms") or {}
    first = (record.get("load_ms") or 0) + (record.get("first_inference_ms") or 0) if measured else None
    config = record.get("config") or {}
    return {
        "engine": record.get("engine"), "format": record.get("format"), "backend": record.get("backend"),
        "precision": record.get("precision"), "how": record.get("label"),
        "reference": record.get("format") == "torch",
        "kept": not dropped(record), "precision_check": record.get("precision_check"),
        "validated": bool(exp) or record.get("format") == "torch", "status": status,
        "accuracy": accuracy, "fp32_accuracy": reference,
        "top1_drop_points": round(100 * (reference - accuracy), 3)
        if isinstance(accuracy, (int, float)) and isinstance(reference, (int, float)) else None,
        "top1_agreement": exp.get("top1_agreement"), "validated_on_images": exp.get("images"),
        "size_mb": round(exp["size_bytes"] / 1e6, 2) if exp.get("size_bytes") else None,
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "std", "min") if k in lat},
        "throughput": throughput(record).to_json(),
        "time_to_first_inference_ms": round(first, 3) if first is not None else None,
        "load_ms": record.get("load_ms"), "first_run_ms": record.get("first_inference_ms"),
        "memory": record.get("memory"),
        "preprocess_p50_ms": pre.get("p50"),
        "end_to_end_p50_ms": round(pre["p50"] + lat["p50"], 4) if "p50" in pre and "p50" in lat else None,
        "batch": batch_of(record), "threads": config.get("threads"), "warmup": config.get("warmup"),
        "iterations": record.get("iterations"),
        "runtime": record.get("runtime") or {"backend": record.get("backend")},
        "calibration": record.get("calibration"), "covers": record.get("covers"),
    }


def build_card(run_dir: str | Path, target: str) -> dict[str, Any]:
    """The card of one target from the run's profiles/<target>.json, export manifest and summary."""
    run, tgt = RunDir(run_dir), get_target(target)
    root = run.root
    if not run.profile(tgt.name).exists():
        raise EdgeftError(f"{run.profile(tgt.name)}: no profiles for {tgt.name}; "
                          f"run `edgeft card {root} --target {tgt.name}`")
    records = _in_card_order(ProfileManifest.read(run.root, tgt.name).records)
    summary = run.read_summary()
    student = artifacts.read_json(run.student_card) if run.student_card.exists() else {}
    exports = Exports.read(root)
    engines = [_engine(r, exports) for r in records if not exports.is_refused(r)]  # refused: listed by reason
    labels = {e["how"] for e in engines}
    how = labels.pop() if len(labels) == 1 else "measured and estimated"
    return {
        "schema": SCHEMA, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": root.name,
        "model": _model(student, summary),
        "data": summary.get("data"),
        "target": {"name": tgt.name, "title": tgt.title, "kind": tgt.kind},
        "how": how,
        "label": (MEASURED_NOTE if how == "measured" else ESTIMATED_NOTE).format(target=tgt.name),
        "recommended": _recommended(engines),
        "engines": engines,
        "dropped": [e["precision_check"]["reason"] for e in engines if not e["kept"]],
        "refused": [{"format": f, "precision": p, "reason": why} for (f, p), why in exports.refused.items()],
        "covers": _covers(engines),
        "versions": _versions(engines, exports, records),
        "notes": tgt.notes,
    }


def _in_card_order(records: list[dict]) -> list[dict]:
    """PyTorch's reference first, then by format and from the highest precision down."""
    rank = {p: i for i, p in enumerate(ORDER)}
    return sorted(records, key=lambda r: (r.get("format") != "torch", r.get("format") or "",
                                          rank.get(r.get("precision"), len(rank))))


def _model(student: dict, summary: dict) -> dict[str, Any]:
    """The card's model facts: the student card first, the run summary where it is silent."""
    figures = summary.get("student", {})
    return {"arch": student.get("arch") or figures.get("name"), "task": "image classification",
            "classes": student.get("num_classes") or summary.get("data", {}).get("classes"),
            "class_names": student.get("class_names"), "input_size": student.get("input_size"),
            "mean": student.get("mean"), "std": student.get("std"),
            "teacher": student.get("teacher") or (summary.get("teacher") or {}).get("name"),
            "method": student.get("method") or summary.get("method"),
            "params": figures.get("params"), "macs": figures.get("macs"),
            "student_accuracy": figures.get("accuracy")}


def _recommended(engines: list[dict]) -> dict[str, Any] | None:
    """The fastest (p50) engine kept by the precision policy and validated against PyTorch, if any."""
    candidates = [e for e in engines
                  if e["kept"] and e["validated"] and not e["reference"] and e["latency_ms"].get("p50")]
    best = min(candidates, key=lambda e: e["latency_ms"]["p50"], default=None)
    if best is None:
        return None
    return {k: best[k] for k in ("format", "backend", "precision", "engine", "how", "status")}


def _versions(engines: list[dict], exports: Exports, records: list[dict]) -> dict[str, Any]:
    """edgeft's, the export's and each engine's runtime versions, and the profiling host."""
    return {"edgeft": _version(), "export": next((r.get("versions") for r in exports.rows.values()), None),
            "runtimes": {f"{e['format']} {e['precision']}": e["runtime"] for e in engines},
            "host": next((r.get("host") for r in records if r.get("host")), None)}


def _covers(engines: list[dict]) -> dict[str, str]:
    images = next((e["validated_on_images"] for e in engines if e["validated_on_images"]), None)
    measured = next((e for e in engines if e["how"] == "measured"), None)
    estimated = next((e for e in engines if e["how"] == "estimated"), None)
    out = {"accuracy": f"top-1 on {images or '?'} held-out images, each engine run on this host next to PyTorch fp32 "
                       "on the same images (top1_drop_points = fp32 − engine, in points)",
           "throughput": DEFINITION}
    if measured:
        out["latency"] = f"compute only: {measured['covers']}"
        out["end_to_end"] = ("preprocessing p50 (uint8 HWC → normalised NCHW, numpy, JPEG decoding and resizing "
                             "not included) + compute p50, measured separately")
        out["time_to_first_inference"] = "engine load + first run, in a fresh engine"
        out["memory"] = ("peak resident memory added while loading and running the engine (the kernel's peak RSS, "
                         "reset before loading), and that process's peak; engines profiled one after another in one "
                         "process may reuse memory an earlier one freed, so `edgeft profile ENGINE` in a fresh "
                         "process gives the engine's own")
        threads = measured["threads"]
        out["threads"] = f"{threads}" if threads else "the runtime's default (all cores)"
    if estimated:
        out["estimate"] = (f"compute only: {estimated['covers']}; p90/p99, first inference and memory are not estimated; "
                           f"{NOT_BUILT} (estimated from the ONNX graph)")
    return out


def _validated_cell(engine: dict) -> str:
    status = engine["status"]
    if status in ("validated", "reference"):
        return "yes" if status == "validated" else "reference"
    return f"ONNX only ({NOT_BUILT})" if NOT_BUILT in status else "**no**"


def _throughput_cells(engine: dict) -> tuple[str, str]:
    """The card's img/s cells, formatted exactly as the report's (edgeft.figures)."""
    return Throughput.from_json(engine["throughput"]).cells()


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("edgeft")
    except metadata.PackageNotFoundError:
        return None


def _cell(value: Any, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    return f"{value * scale:.{digits}f}{suffix}" if isinstance(value, (int, float)) else DASH


def markdown(card: dict[str, Any]) -> str:
    """The card as Markdown."""
    model, tgt = card["model"], card["target"]
    lines = [f"# {model['arch']} on {tgt['title']}", "", f"**{card['how'].upper()}** · {card['label']}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _facts(card)] + [""]
    lines += _performance(card["engines"], _input_size(model))
    lines += _refused_and_dropped(card)
    lines += ["", "## What the numbers cover", ""]
    lines += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in card["covers"].items()]
    for e in card["engines"]:
        if e["calibration"]:
            lines.append(f"- **calibration of {e['format']} {e['precision']}**: {e['calibration'].get('label')} — "
                         f"{e['calibration'].get('source')}")
    lines += _versions_section(card["versions"])
    if card.get("notes"):
        lines += ["", f"Target notes: {card['notes']}"]
    lines += ["", f"Generated {card['generated']} by edgeft ({SCHEMA}).", ""]
    return "\n".join(lines)


def _facts(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's head table: task, model, how it was trained, target, recommended engine."""
    model, tgt, rec = card["model"], card["target"], card["recommended"]
    size = _input_size(model)
    names = f" ({', '.join(model['class_names'][:10])})" if model.get("class_names") else ""
    params = f", {model['params'] / 1e6:.2f} M params" if model.get("params") else ""
    macs = f", {model['macs'] / 1e6:.0f} MMACs" if model.get("macs") else ""
    if rec:
        built = f"; {NOT_BUILT})" if NOT_BUILT in rec["status"] else ")"
        engine = f"{rec['format']} {rec['precision']} on {rec['backend']} (fastest kept and validated, p50{built}"
    else:
        engine = f"{DASH} (no validated engine profiled here)"
    return [("task", f"{model['task']}, {model['classes']} classes{names}"),
            ("model", f"{model['arch']}, input {size}{params}{macs}"),
            ("trained", f"{model.get('method') or '?'} from teacher {model.get('teacher') or 'none'}"),
            ("target", f"{tgt['name']} ({tgt['kind']})"),
            ("recommended engine", engine)]


def _input_size(model: dict) -> str:
    return "×".join(str(s) for s in model["input_size"]) if model.get("input_size") else "?"


def _performance(engines: list[dict], size: str) -> list[str]:
    """The Performance section: one table row per engine, at the engines' own input resolution."""
    head = ("engine", "precision", "how", "kept", "validated", "top-1", "vs FP32 (points)", "p50 ms", "p90 ms",
            "p99 ms", AT_BATCH, BEST, "first inference ms", "peak MB", "end-to-end p50 ms")
    return ["## Performance", "", f"Every latency is at the engines' own input, {size}.", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(_performance_cells(e)) + " |" for e in engines]


def _performance_cells(e: dict) -> list[str]:
    """One engine's row of the Performance table."""
    lat, mem = e["latency_ms"], e["memory"] or {}
    name = f"{e['format']} ({e['backend']})" + (" reference" if e["reference"] else "")
    drop = e["top1_drop_points"]
    return [name, e["precision"] or DASH, e["how"], "yes" if e["kept"] else "**dropped**", _validated_cell(e),
            _cell(e["accuracy"], 2, 100, " %"), _cell(0.0 - drop if drop is not None else None, 2),
            _cell(lat.get("p50"), 3), _cell(lat.get("p90"), 3), _cell(lat.get("p99"), 3),
            *(cell or DASH for cell in _throughput_cells(e)),
            _cell(e["time_to_first_inference_ms"], 1), _cell(mem.get("peak_increase_mb"), 1),
            _cell(e["end_to_end_p50_ms"], 3)]


def _refused_and_dropped(card: dict[str, Any]) -> list[str]:
    """The sections on precisions refused at export and on those kept only where faster."""
    lines = []
    if card["refused"]:
        lines += ["", "## Refused at export (never recommended)", ""]
        lines += [f"- {r['format']} {r['precision']}: {r['reason']}" for r in card["refused"]]
    checks = [e["precision_check"] for e in card["engines"] if e["precision_check"]]
    if checks:
        lines += ["", "## Precisions kept only where faster (>= 1.02x vs the next higher kept precision)", ""]
        lines += [f"- {c['format']} {c['precision']}: {'kept' if c['kept'] else '**dropped**'} — {c['reason']}"
                  for c in checks]
    return lines


def _versions_section(versions: dict[str, Any]) -> list[str]:
    """The Versions section: edgeft, the export's tools, the runtimes and the host."""
    lines = ["", "## Versions", "", f"- edgeft {versions['edgeft']}"]
    if versions.get("export"):
        lines.append("- export: " + ", ".join(f"{k} {v}" for k, v in versions["export"].items() if v))
    runtimes = {f"{r.get('backend')} {r.get('version', '')}".strip() for r in versions["runtimes"].values()}
    lines.append("- runtimes: " + ", ".join(sorted(runtimes)))
    if versions.get("host"):
        host = versions["host"]
        lines.append(f"- host: {host.get('cpu')} ({host.get('cores')} logical cores), {host.get('system')}, "
                     f"Python {host.get('python')}, numpy {host.get('numpy')}")
    return lines


def write_cards(run_dir: str | Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Writes cards/<target>.{md,json} for `targets` (default: every target with profiles); returns the .md paths."""
    run = RunDir(run_dir)
    if targets is None:
        targets = sorted(p.stem for p in run.profile_files() if p.stem in TARGETS.names())
    written = []
    for target in targets:
        card = build_card(run.root, target)
        name = card["target"]["name"]
        artifacts.write_json(run.card(name, ".json"), card)
        written.append(artifacts.write_text(run.card(name, ".md"), markdown(card)))
    return written


def make_cards(run_dir: str | Path, targets: Iterable[str] = ("all",), cfg=None) -> list[Path]:
    """Cards for `targets` ('all': every registered target), profiling targets that have no profiles
    first (host measured, others estimated), then keeping precisions only where faster."""
    run = RunDir(run_dir)
    root = run.root
    if not run.is_run():
        raise EdgeftError(f"{root}: not a run directory (no {run.student_card.relative_to(root)} or "
                          f"{run.export_manifest.name})")
    names = list(TARGETS.names()) if "all" in targets else [get_target(t).name for t in targets]
    for name in names:
        if not run.profile(name).exists():
            log.info("profiling %s on %s", root.name, name)
            profile_on_target(root, name, cfg=cfg or ProfileConfig())
        apply_policy(root, name)
    return write_cards(root, names)
