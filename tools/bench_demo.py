"""The README's demo, timed: what the teacher buys over fine-tuning alone, and how long it takes.

    python tools/bench_demo.py

Runs `edgeft compress --teacher demo --data demo` (the README's demo command, in .cache/demo-bench/)
and writes results/demo.json + results/demo.md: the student's accuracy beside the same student
fine-tuned alone and beside the teacher, the gain, the wall time and the load average around it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, dump_json, provenance  # noqa: E402

from edgeft import artifacts  # noqa: E402

OUT = CACHE / "demo-bench" / "run"
COMMAND = ["edgeft", "compress", "--teacher", "demo", "--data", "demo", "--out", str(OUT)]


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    load_before = os.getloadavg()
    began = time.time()
    subprocess.run([sys.executable, "-m", "edgeft", *COMMAND[1:]], check=True)
    wall = time.time() - began
    summary = artifacts.read_json(OUT / "summary.json")
    result = {
        "command": " ".join(COMMAND[:-2] + ["--out", "runs/demo"]),
        "wall_seconds": round(wall, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "method": summary["method"],
        "student": summary["student"],
        "baseline": summary.get("baseline"),
        "gain_over_baseline": summary.get("gain_over_baseline"),
        "teacher": summary["teacher"],
        "data": summary["data"],
        "provenance": provenance(0),
    }
    dump_json(RESULTS / "demo.json", result)
    teacher, student, base = summary["teacher"], summary["student"], summary.get("baseline") or {}
    lines = [
        "# The demo: what the teacher buys", "",
        f"`{result['command']}` on the bundled data ({summary['data']['train_images']} training / "
        f"{summary['data']['val_images']} validation images, {summary['data']['classes']} classes), seed 0.", "",
        "| model | accuracy |", "|---|---|",
        f"| teacher {teacher['name']} ({teacher['evaluated_as']}) | {teacher['accuracy']:.2%} |",
        f"| student {student['name']}, fine-tuned alone (stl) | {base.get('accuracy', float('nan')):.2%} |",
        f"| student {student['name']}, {summary['method']} | {student['accuracy']:.2%} |", "",
        f"Gain over fine-tuning alone: **{100 * (summary.get('gain_over_baseline') or 0):+.2f} points**. "
        f"Wall time {wall:.0f} s on {result['provenance']['hardware']['cpu']} "
        f"({result['provenance']['hardware']['threads']} threads), load average "
        f"{result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after; "
        f"versions {result['provenance']['versions']}; commit {result['provenance']['commit']}.", "",
    ]
    artifacts.write_text(RESULTS / "demo.md", "\n".join(lines))
    print(RESULTS / "demo.md")


if __name__ == "__main__":
    main()
