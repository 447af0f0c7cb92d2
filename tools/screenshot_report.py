"""Renders a run's report.html in headless Chromium and saves a screenshot (a check that it renders).

    python tools/screenshot_report.py RUN_DIR [--out results/report-screenshot.png]

Needs a Chromium binary (`apt-get install chromium`, or CHROMIUM=/path/to/chrome); exits
with a message when none is found. The page is self-contained, so no network is used.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The Chromium executable: $CHROMIUM or the first candidate on PATH."""
    return os.environ.get("CHROMIUM") or next((p for p in map(shutil.which, CANDIDATES) if p), None)


def screenshot(html: Path, out: Path, width: int = 1100, height: int = 3000, timeout_s: float = 120) -> Path:
    """Headless Chromium renders `html` (file://) into the PNG `out`."""
    binary = find_chromium()
    if binary is None:
        sys.exit("skipped: no Chromium found (apt-get install chromium, or set CHROMIUM)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeft-chromium-") as profile:
        subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out.resolve()}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout_s)
    if not out.is_file() or out.stat().st_size == 0:
        sys.exit(f"Chromium wrote no screenshot for {html}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/report-screenshot.png"))
    args = parser.parse_args()
    html = args.run_dir / "report.html"
    if not html.is_file():
        sys.exit(f"{html}: not found; run `edgeft report {args.run_dir}` first")
    print(screenshot(html, args.out))


if __name__ == "__main__":
    main()
