"""Export benchmark: size, accuracy and agreement with PyTorch per format × precision.

    python tools/bench_export.py --demo                       # the demo run (made when absent)
    python tools/bench_export.py --run RUN_DIR [--run RUN_DIR ...]

Every run's student is exported with `edgeft.export.export_run` (engines and export.json
land in the run); results/export.json and results/export.md collect the records, the
acceptance checks (fp32 top-1 agreement >= 99.5 %, int8 accuracy drop <= 1.5 points),
command, seed, hardware and versions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, dump_json, provenance  # noqa: E402

from edgeft.artifacts import RunDir, read_json, write_text  # noqa: E402
from edgeft.export import export_run  # noqa: E402
from edgeft.export.base import library_version  # noqa: E402

DEMO_RUN = CACHE / "export" / "demo"
MIN_FP32_AGREEMENT, MAX_INT8_DROP = 0.995, 0.015


def demo_run(out: Path = DEMO_RUN) -> Path:
    """`edgeft compress --teacher demo --data demo` into `out`, unless a finished run is there."""
    from edgeft.cli import cli

    if not RunDir(out).has_student():
        cli.main(["compress", "--teacher", "demo", "--data", "demo", "--out", str(out),
                  *(["--resume"] if RunDir(out).config.exists() else [])], standalone_mode=False)
    return out


def bench_run(run: Path, formats: list[str], precisions: list[str], calib: int, images: int) -> dict:
    """Exports one run and returns its records with the acceptance checks."""
    began = time.time()
    records = [r.to_json() for r in export_run(run, formats, precisions, calib=calib, images=images).records]
    card = read_json(RunDir(run).student_card)
    checks = {}
    for r in records:
        if r["precision"] == "fp32":
            name = f"{r['format']} fp32 top-1 agreement >= {MIN_FP32_AGREEMENT:.1%}"
            checks[name] = r["top1_agreement"] >= MIN_FP32_AGREEMENT
        if r["precision"] == "int8":
            drop = r["reference_accuracy"] - r["accuracy"]
            checks[f"{r['format']} int8 accuracy drop <= {MAX_INT8_DROP * 100:.1f} points"] = drop <= MAX_INT8_DROP
    return {
        "run": str(run), "student": card["arch"], "teacher": card.get("teacher") or "none", "method": card.get("method"),
        "input_size": card["input_size"], "classes": card["num_classes"],
        "seconds": round(time.time() - began, 1), "records": records, "checks": checks,
    }


def markdown(result: dict) -> str:
    """results/export.md: one table per run, then the checks and provenance."""
    lines = ["# Export: size, accuracy and agreement with PyTorch", "",
             "Each engine is validated against the PyTorch student on the run's held-out images "
             "(`edgeft export`, `edgeft/export/validate.py`). Accuracy is the engine's own top-1 on "
             "those images; Δ is its difference to PyTorch in points.", ""]
    for entry in result["runs"]:
        lines += [f"## {entry['student']} ({entry['method']}, teacher {entry['teacher']}, "
                  f"{'×'.join(map(str, entry['input_size'][1:]))} px, {entry['classes']} classes)", "",
                  f"Run `{entry['run']}`; {entry['seconds']:.0f} s for all exports.", "",
                  "| format | precision | size MB | accuracy | Δ vs PyTorch | top-1 agreement | max abs diff "
                  "| cosine | images | validated with |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["records"]:
            delta = (r["accuracy"] - r["reference_accuracy"]) * 100
            lines.append(
                f"| {r['format']} | {r['precision']} | {r['size_bytes'] / 1e6:.2f} | {r['accuracy']:.2%} "
                f"| {delta:+.1f} | {r['top1_agreement']:.2%} | {r['max_abs_diff']:.1e} | {r['cosine']:.5f} "
                f"| {r['images']} | {r['validated_with']} |")
        notes = sorted({r["note"] for r in entry["records"] if r["note"]})
        lines += [""] + [f"- {'pass' if ok else 'FAIL'}: {name}" for name, ok in entry["checks"].items()]
        lines += [f"- note: {note}" for note in notes] + [""]
    prov = result["provenance"]
    lines.append(f"Command: `{prov['command']}`; seed {prov['seed']}; hardware {prov['hardware']}; "
                 f"versions {prov['versions']}; commit {prov['commit']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="A run directory with a student (repeatable).")
    parser.add_argument("--demo", action="store_true", help=f"Also the demo run ({DEMO_RUN}; made when absent).")
    parser.add_argument("--format", default="onnx,openvino,tensorrt")
    parser.add_argument("--precision", default="fp32,fp16,int8")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS / "export")
    args = parser.parse_args()
    runs = [Path(r) for r in args.run] + ([demo_run()] if args.demo else [])
    if not runs:
        parser.error("name at least one --run DIR, or --demo")
    prov = provenance(seed=0)
    prov["versions"].update({n: library_version(n) for n in ("onnx", "onnxruntime", "openvino", "nncf", "tensorrt")})
    result = {"provenance": prov, "runs": [bench_run(run, args.format.split(","), args.precision.split(","),
                                                      args.calib, args.images) for run in runs]}
    dump_json(args.out.with_suffix(".json"), result)
    write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
