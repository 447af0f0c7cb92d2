"""A run's report: report.md and a self-contained report.html with plots (matplotlib, PNG in base64).

Reads only the run directory: summary.json, metrics.jsonl, the export manifest and the profile
records in profiles/*.json (`edgeft profile RUN --target T`). Every latency says whether it
was measured or estimated.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeft import artifacts
from edgeft.artifacts import ProfileManifest, RunDir
from edgeft.errors import EdgeftError
from edgeft.figures import AT_BATCH, BEST, DEFINITION, throughput
from edgeft.runtime import FORMAT_BACKEND
from edgeft.validated import Exports


COLUMNS = ("target", "engine", "precision", "how", "p50 ms", "p90 ms", "p99 ms", AT_BATCH, BEST, "top-1", "speed-up")
TOP_LAYERS = 15


@dataclass
class Report:
    """What the report shows: summary rows, figures (PNG bytes by title), and where files went."""

    run: Path
    summary: dict
    rows: list[dict] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    markdown: Path | None = None
    html: Path | None = None
    cards: list[Path] = field(default_factory=list)  # cards/<target>.md (edgeft.modelcard)
    refused: list[dict] = field(default_factory=list)  # the export manifest's refused engines, with their reasons


def profile_records(run: RunDir) -> list[dict]:
    """All profile records of the run, host first."""
    return [r for f in run.profile_files() for r in ProfileManifest.read_file(f).records]


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per record: target, engine, precision, measured/estimated, latency, throughput, accuracy."""
    rows = []
    for r in records:
        lat = r.get("latency_ms", {})
        at_batch, best = throughput(r).cells()
        rows.append({
            "target": r.get("target", ""), "engine": _engine(r),
            "precision": r.get("precision") or "", "how": r.get("label", ""),
            "p50 ms": _num(lat.get("p50")), "p90 ms": _num(lat.get("p90")), "p99 ms": _num(lat.get("p99")),
            AT_BATCH: at_batch, BEST: best,
            "top-1": f"{r['accuracy']:.2%}" if isinstance(r.get("accuracy"), (int, float)) else "",
            "speed-up": _speedup(r.get("precision_check")),
            "_p50": lat.get("p50"), "_accuracy": r.get("accuracy"),
        })
    return rows


def _speedup(check: dict | None) -> str:
    """The precision decision (edgeft.precision_policy): baseline, '1.85x vs fp32', or 'dropped: …'."""
    if not check:
        return ""
    if check.get("speedup") is None:
        return "baseline"
    text = f"{check['speedup']:.2f}x vs {check['vs']}"
    return text if check["kept"] else f"dropped: {text}"


def _engine(record: dict) -> str:
    """The format, with the runtime named when it is not the format's own (e.g. onnx on openvino)."""
    fmt, backend = record.get("format") or "", record.get("backend") or ""
    return fmt if FORMAT_BACKEND.get(fmt) == backend else f"{fmt} ({backend})"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower latency and higher accuracy, by latency."""
    front, best = [], -1.0
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (in the default install)."""
    try:
        import matplotlib
    except ImportError:
        raise EdgeftError("matplotlib is not installed: pip install 'matplotlib>=3.7'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


TEACHER_STAGE = "teacher"  # stages named teacher-* train on the teacher (its probe): a reference, not the student
BASELINE_STAGE = "baseline"  # stages named baseline-* train a fresh student alone (the comparison), from epoch 1


@dataclass(frozen=True)
class Curve:
    """One training stage's per-epoch figures, at x positions on the run's epoch axis."""

    stage: str
    x: list[int]
    loss: list[float]
    train_acc: list[float | None]
    val_acc: list[float | None]


def training_curves(metrics: list[dict]) -> dict[str, list[Curve]]:
    """metrics.jsonl rows → one Curve per stage, student stages and teacher stages apart.

    Student stages run one after another on the same model, so they share one epoch axis,
    each stage starting where the previous ended; each teacher stage, and the baseline (the same
    student fine-tuned alone, drawn beside the method's stages for comparison), starts at epoch 1.
    """
    stages: dict[str, list[dict]] = {}
    for row in metrics:
        if "loss" in row:
            stages.setdefault(str(row.get("stage") or "train"), []).append(row)
    curves: dict[str, list[Curve]] = {"student": [], "teacher": []}
    offset = 0
    for stage, rows in stages.items():
        teacher, alone = stage.startswith(TEACHER_STAGE), stage.startswith(BASELINE_STAGE)
        start = 0 if teacher or alone else offset
        x = [start + i for i in range(1, len(rows) + 1)]
        curves["teacher" if teacher else "student"].append(Curve(
            stage, x, [r["loss"] for r in rows], [r.get("train_acc") for r in rows], [r.get("val_acc") for r in rows]))
        offset = offset if teacher or alone else x[-1]
    return curves


def plot_training(metrics: list[dict]) -> bytes | None:
    """Loss and accuracy per epoch, one colour per stage; the teacher's probe in its own panel."""
    curves = training_curves(metrics)
    if not curves["student"] and not curves["teacher"]:
        return None
    plt = _pyplot()
    panels = [("student", "loss"), ("student", "top-1")] if curves["student"] else []
    panels += [("teacher", "top-1")] if curves["teacher"] else []
    # <= 9.8 in at 110 dpi: the page shows figures at most 1000 px wide, so they are never scaled down
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4), squeeze=False)
    colours = iter(plt.cm.tab10.colors)
    colour = {c.stage: next(colours) for c in curves["student"] + curves["teacher"]}
    for ax, (who, what) in zip(axes[0], panels):
        _training_panel(ax, curves[who], who, what, colour)
    fig.tight_layout()
    return _png(fig)


TRAINING_TITLES = {("student", "loss"): "student: training loss", ("student", "top-1"): "student: accuracy",
                   ("teacher", "top-1"): "teacher probe (frozen teacher)"}


def _training_panel(ax: Any, curves: list[Curve], who: str, what: str, colour: dict[str, Any]) -> None:
    """One panel of `plot_training`: `what` (loss or top-1) of `who`'s stages, student stages spanned in order."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    for c in curves:
        if what == "loss":
            ax.plot(c.x, c.loss, marker="o", ms=3, color=colour[c.stage], label=c.stage)
        for values, style, kind in ((c.val_acc, "-", "validation"), (c.train_acc, "--", "train")):
            pts = [(x, v) for x, v in zip(c.x, values) if v is not None]
            if what == "top-1" and pts:
                ax.plot(*zip(*pts), ls=style, marker="o" if kind == "validation" else None, ms=3,
                        color=colour[c.stage], label=f"{c.stage} ({kind})")
    if who == "student":
        for n, c in enumerate(c for c in curves if not c.stage.startswith(BASELINE_STAGE)):
            if n:  # each stage's span: boundary and name on top (the baseline's legend names it)
                ax.axvline(c.x[0] - 0.5, color="grey", ls=":", lw=1)
            ax.text((c.x[0] + c.x[-1]) / 2, 1.01, c.stage, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7, color=colour[c.stage])
    ax.set_xlabel("epoch (student stages in order)" if who == "student" else "epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if what == "top-1":
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(TRAINING_TITLES[(who, what)], pad=14 if who == "student" else 6)
    ax.set_ylabel(what)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


MARKERS = {"onnx": "o", "openvino": "s", "tensorrt": "^", "torch": "D"}


def plot_tradeoff(rows: list[dict]) -> bytes | None:
    """Accuracy vs batch-1 p50 latency per target × engine × precision, with each target's Pareto front.

    Points are named in the legend, not beside them (close points would overprint), and
    drawn translucent so that coinciding ones show; filled = measured, hollow = estimated;
    rings mark the points on the front.
    """
    points = [r for r in rows if isinstance(r["_p50"], (int, float)) and isinstance(r["_accuracy"], (int, float))]
    if not points:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    fig, ax = plt.subplots(figsize=(6.2, 4.4))  # + the legend beside it: <= 9.8 in
    colours = plt.cm.tab20.colors if len(points) > 10 else plt.cm.tab10.colors
    for i, r in enumerate(points):
        colour, measured = colours[i % len(colours)], r["how"] == "measured"
        ax.scatter(r["_p50"], r["_accuracy"], s=52, marker=MARKERS.get(r["engine"].split(" ")[0], "o"),
                   color=colour if measured else "none", edgecolors=colour, linewidths=1.6, zorder=3, alpha=0.8,
                   label=f"{r['target']} · {r['engine']} {r['precision']}" + ("" if measured else " (estimated)"))
    right = max(r["_p50"] for r in points) * 1.5
    targets = list(dict.fromkeys(r["target"] for r in points))
    for target, style in zip(targets, ["--", ":", "-.", (0, (5, 1, 1, 1))] * len(targets)):
        front = pareto([(r["_p50"], r["_accuracy"]) for r in points if r["target"] == target])
        xs, ys = zip(*(front + [(right, front[-1][1])]))  # the best accuracy holds at any higher latency
        ax.step(xs, ys, where="post", color="black", lw=1.1, ls=style, zorder=2, label=f"Pareto front: {target}")
        ax.scatter(*zip(*front), s=170, facecolors="none", edgecolors="black", linewidths=0.8, zorder=2)
    left = min(r["_p50"] for r in points) / 1.5
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    # 0.5 1 2 5 10 … over a wide range, every integer step over a narrow one: labels never collide
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if right / left >= 4 else range(1, 10)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set(xlabel="p50 latency, batch 1 (ms, log scale)", ylabel="top-1 accuracy", title="accuracy vs latency")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="filled: measured, hollow: estimated", title_fontsize=7.5)
    return _png(fig)


def layer_bars(record: dict) -> list[tuple[str, float]]:
    """The slowest layers of a profile record as (label, ms), slowest first.

    A label is the PyTorch module path with the kernel's op (`layer1.0.conv1 · Conv`) where
    the engine's map knows it (edgeft.runtime.layers), else the runtime's own node name;
    kernels of one module and op (e.g. split by the runtime) are summed.
    """
    totals: dict[str, float] = {}
    for layer in record.get("layers") or []:
        op = layer.get("op", "").split("/")[0]
        name = layer["name"] if len(layer["name"]) <= 38 else "…" + layer["name"][-37:]
        label = f"{layer['module']} · {op}" if layer.get("module") else f"{name} ({op})"
        totals[label] = totals.get(label, 0.0) + layer["ms"]
    return sorted(totals.items(), key=lambda item: -item[1])[:TOP_LAYERS]


def plot_layers(record: dict) -> bytes | None:
    """The slowest layers of one measured profile record as horizontal bars."""
    bars = layer_bars(record)
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(bars) + 1.2))
    names, ms = zip(*bars[::-1])
    ax.barh(names, ms, color="#4c72b0")
    ax.set(xlabel="ms per run (median)", title=f"slowest layers: {record.get('target')} {record.get('backend')} "
                                               f"{record.get('precision') or ''} (measured)")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def build_report(run_dir: str | Path) -> Report:
    """Collects the run's results and draws the figures (no files written)."""
    run = RunDir(run_dir)
    if not run.summary.exists():
        raise EdgeftError(f"{run.root}: no summary.json; run `edgeft compress --out {run.root}` first")
    report = Report(run.root, artifacts.read_json(run.summary))
    exports = Exports.read(run.root)
    report.refused = [{"format": f, "precision": p, "reason": why} for (f, p), why in exports.refused.items()]
    records = [r for r in profile_records(run) if not exports.is_refused(r)]  # a refused precision: its reason only
    report.rows = summary_rows(records)
    figures = {"Training curves": plot_training(artifacts.read_jsonl(run.metrics)),
               "Accuracy vs latency": plot_tradeoff(report.rows)}
    # The fastest measured engine: the one a user would deploy. Estimated records get no chart:
    # their engine was never built, so it has no layers to time.
    with_layers = [r for r in records if r.get("label") == "measured" and r.get("layers")
                   and (r.get("precision_check") or {}).get("kept") is not False]
    if with_layers:
        fastest = min(with_layers, key=lambda r: r.get("latency_ms", {}).get("p50") or float("inf"))
        figures[f"Per-layer time (measured, {fastest.get('target')})"] = plot_layers(fastest)
    report.figures = {k: v for k, v in figures.items() if v}
    return report


def write_report(run_dir: str | Path) -> Report:
    """Writes report.md (+ report/*.png) and the self-contained report.html into the run."""
    report, run = build_report(run_dir), RunDir(run_dir)
    assets = run.report_assets
    pngs = {}
    for title, data in report.figures.items():
        name = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") + ".png"
        artifacts.write_bytes(assets / name, data)
        pngs[title] = f"{assets.name}/{name}"
    report.markdown = artifacts.write_text(run.report_markdown, _markdown(report, pngs))
    report.html = artifacts.write_text(run.report_html, _html(report))
    return report


def _facts(report: Report) -> list[tuple[str, str]]:
    s = report.summary
    student, teacher, data = s.get("student", {}), s.get("teacher") or {}, s.get("data", {})
    acc, card = student.get("accuracy"), RunDir(report.run).student_card
    size = "×".join(map(str, artifacts.read_json(card)["input_size"])) if card.exists() else "?"
    return [("method", str(s.get("method", ""))), ("teacher", str(teacher.get("name", "—"))),
            ("input", f"{size} (the engines' own resolution: every latency below is at it)"),
            ("student", f"{student.get('name', '')} ({student.get('params', 0) / 1e6:.2f} M params, "
                        f"{student.get('macs', 0) / 1e6:.0f} MMACs)"),
            ("student accuracy", f"{acc:.2%}" if isinstance(acc, (int, float)) else "—"),
            *_comparison(s),
            ("data", f"{data.get('train_images', '?')} training / {data.get('val_images', '?')} validation images, "
                     f"{data.get('classes', '?')} classes")] + [
            (f"refused: {r['format']} {r['precision']}", r["reason"]) for r in report.refused]


def _comparison(summary: dict) -> list[tuple[str, str]]:
    """What the teacher bought: the same student fine-tuned alone, the gain, and the teacher itself."""
    rows = []
    baseline, teacher = summary.get("baseline"), summary.get("teacher") or {}
    if baseline:
        rows += [("fine-tuned alone (stl)", f"{baseline['accuracy']:.2%}"),
                 ("gain over fine-tuning alone", f"{100 * summary['gain_over_baseline']:+.2f} points")]
    if isinstance(teacher.get("accuracy"), (int, float)):
        rows.append((f"teacher ({teacher.get('evaluated_as') or 'evaluated'})", f"{teacher['accuracy']:.2%}"))
    return rows


NOTE = ("*measured*: timed on the device (warm-up, then runs until both the iteration and time minimum; "
        "compute only on a prepared batch). *estimated*: roofline over the ONNX graph against the target's "
        "published peaks, calibrated as each profile record's `calibration` field says — not a measurement. "
        f"*img/s*: {DEFINITION}. "
        "*speed-up*: batch-1 p50 vs the next higher kept precision of the same engine on the same target; "
        "below 1.02x the precision is dropped (not recommended; its file stays, "
        f"{artifacts.EXPORT_MANIFEST} says why).")


def _markdown(report: Report, pngs: dict[str, str]) -> str:
    lines = [f"# edgeft report: {report.run.name}", "", f"Generated {_now()}.", ""]
    lines += [f"- **{k}**: {v}" for k, v in _facts(report)] + ["", "## Latency per target", ""]
    if report.rows:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in report.rows]
    else:
        lines.append("No profiles yet: run `edgeft profile RUN_DIR --target T`.")
    lines += ["", NOTE, ""]
    for title, path in pngs.items():
        lines += [f"## {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines)


def _html(report: Report) -> str:
    esc = html.escape
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _facts(report))
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr class='{}'>{}</tr>".format(esc(r["how"]), "".join(f"<td>{esc(r[c])}</td>" for c in COLUMNS))
                   for r in report.rows) or f"<tr><td colspan='{len(COLUMNS)}'>no profiles yet</td></tr>"
    figures = "".join(
        f"<figure><figcaption>{esc(t)}</figcaption><img alt='{esc(t)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'></figure>" for t, png in report.figures.items())
    note = esc(NOTE).replace("*measured*", "<b>measured</b>").replace("*estimated*", "<b>estimated</b>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeft report: {esc(report.run.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }}
tr.estimated td {{ color: #8a5a00; font-style: italic; }}
figure {{ margin: 1.5rem 0; }} figcaption {{ font-weight: 600; margin-bottom: 0.4rem; }}
img {{ max-width: 100%; }} .note {{ font-size: 0.85rem; color: #555; }}
</style></head><body>
<h1>edgeft report: {esc(report.run.name)}</h1><p class="note">Generated {esc(_now())}.</p>
<table>{facts}</table>
<h2>Latency per target</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p class="note">{note}</p>
{figures}
</body></html>
"""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
