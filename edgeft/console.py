"""What the commands print: progress bars (or plain lines off a terminal) and the result tables."""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

# markup off: messages carry literal brackets (pip install 'edgeft[tensorrt]') that rich would eat
console = Console(stderr=True, markup=False)
LOG_WIDTH = 160  # result tables written to a file or a pipe: wide enough that no figure is cut to "3.3…"


def stdout() -> Console:
    """The console for result tables: a terminal's own width, else LOG_WIDTH (unless $COLUMNS says otherwise)."""
    out = Console(markup=False)
    return out if out.is_terminal or "COLUMNS" in os.environ else Console(markup=False, width=LOG_WIDTH)


class RichProgress:
    """The training loop's progress sink: on a terminal one rich bar per stage with loss, accuracy and ETA;
    otherwise (a log file, CI) a plain line at every tenth of the stage (at most one per MIN_GAP_S), at least
    every LINE_EVERY_S and where the stage ends, e.g. `stage kd: 120/800 (15%), loss 0.4100, 35 s elapsed, ETA 3:18`."""

    LINE_EVERY_S = 30.0
    MIN_GAP_S = 5.0  # a stage of seconds logs its end only

    def __init__(self, out: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out or console
        self._clock = clock
        self._bar = None
        self._task = None

    def start(self, stage: str, total: int) -> None:
        self._stage, self._total, self._done, self._untimed, self._info = stage, max(1, total), 0, 0, ""
        self._began = self._last_line = self._clock()
        self._next_tenth, self._shown = 1, 0  # the next tenth that prints a line; the steps the last line showed
        if not self._out.is_terminal:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self._out,
        )
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total, info="")

    def advance(self, steps: int, **fields: float) -> None:
        """`steps` more done; steps without fields (a resumed stage's finished epochs) do not count for the ETA."""
        info = ", ".join(f"{k} {v:.4f}" for k, v in fields.items())
        self._done += steps
        self._untimed += 0 if fields else steps
        self._info = info or self._info
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, **({"info": info} if info else {}))
            return
        now = self._clock()
        tenth = self._done * 10 // self._total
        since = now - self._last_line
        if fields and ((tenth >= self._next_tenth and since >= self.MIN_GAP_S) or since >= self.LINE_EVERY_S):
            self._next_tenth = tenth + 1
            self._line(now)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._shown != self._done:  # the last line says where the stage ended
            self._line(self._clock())

    def _line(self, now: float) -> None:
        self._last_line, self._shown = now, self._done
        elapsed = now - self._began
        timed = self._done - self._untimed
        left = self._total - self._done
        eta = f", ETA {_clock_time(elapsed / timed * left)}" if timed and left else ""
        info = f", {self._info}" if self._info else ""
        self._out.print(f"stage {self._stage}: {self._done}/{self._total} ({self._done / self._total:.0%}){info}, "
                        f"{elapsed:.0f} s elapsed{eta}", markup=False, highlight=False, soft_wrap=True)


def _clock_time(seconds: float) -> str:
    """Seconds as h:mm:ss or m:ss."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def say(line: str) -> None:
    """One line on stderr (the pre-flight's summary, the gate's verdict), printed as it is."""
    console.print(line, highlight=False, soft_wrap=True)


def show_summary(summary: dict) -> None:
    """`compress`: teacher, fine-tuned-alone baseline and student side by side, the gain, the data."""
    table = Table("model", "name", "params (M)", "MMACs", "accuracy", title=f"edgeft compress · {summary['method']}")
    teacher, student = summary.get("teacher"), summary["student"]
    if teacher:
        acc = teacher["accuracy"]
        table.add_row(f"teacher ({teacher.get('evaluated_as') or 'not evaluated'})", teacher["name"], f"{teacher['params'] / 1e6:.1f}", "",
                      "" if acc is None else f"{acc:.2%}")
    baseline = summary.get("baseline")
    if baseline:
        table.add_row("student, fine-tuned alone (stl)", student["name"], f"{student['params'] / 1e6:.1f}",
                      f"{student['macs'] / 1e6:.0f}", f"{baseline['accuracy']:.2%}")
    table.add_row(f"student ({summary['method']})", student["name"], f"{student['params'] / 1e6:.1f}",
                  f"{student['macs'] / 1e6:.0f}", f"{student['accuracy']:.2%}")
    stdout().print(table)
    if baseline:
        gain = summary["gain_over_baseline"] * 100
        stdout().print(f"{summary['method']} vs fine-tuning alone: {gain:+.2f} accuracy points",
                                    highlight=False)
    data = summary["data"]
    stdout().print(f"{data['train_images']} training / {data['val_images']} validation images, "
                    f"{data['classes']} classes, {summary['seconds']:.0f} s")


def show_exports(result: Any) -> None:
    """One table of every requested format × precision (passed, refused or skipped), then why, one line each."""
    from edgeft.export.int8_guard import describe

    outcomes = result.outcomes()
    reference = next((o["record"].reference_accuracy for o in outcomes if o["record"]), None)
    table = Table("engine (in engines/)", "status", "MB", "agree", "max |Δ|", "accuracy",
                  title="edgeft export · each engine validated against PyTorch"
                        + (f" (accuracy {reference:.2%})" if reference is not None else ""))
    for row in outcomes:
        r = row["record"]
        cells = ([r.path.removeprefix("engines/"), row["status"], f"{r.size_bytes / 1e6:.1f}", f"{r.top1_agreement:.2%}",
                  f"{r.max_abs_diff:.1e}", f"{r.accuracy:.2%}"] if r else
                 [f"{row['format']} {row['precision']}", row["status"], "", "", "", ""])
        table.add_row(*cells, style={"refused": "red", "skipped": "yellow"}.get(row["status"]))
    stdout().print(table)
    lines = [f"{o['format']} {o['precision']} refused: {o['why']}" for o in outcomes if o["status"] == "refused"]
    lines += [f"{r.format} {r.precision}: {line}" for r in result.records for line in (r.note, describe(r.quantization))
              if line]
    for line in lines:
        stdout().print(line, highlight=False, soft_wrap=True)


def show_methods(methods: Any) -> None:
    """The registered transfer methods, their aliases and whether they need a teacher."""
    table = Table("method", "aliases", "teacher", "what it does")
    aliases = methods.aliases()
    for name in methods.names():
        cls = methods.get(name)
        table.add_row(name, ", ".join(a for a, n in aliases.items() if n == name),
                      "yes" if cls.needs_teacher else "", cls.summary)
    stdout().print(table)


def show_rebuilt(rebuilt: Any) -> None:
    """`profile --rebuild`: the re-exported engines (exit 4 when one is refused), or that none was stale."""
    if rebuilt.requested:
        show_exports(rebuilt)
        rebuilt.check()
    else:
        console.print("--rebuild: every engine fits this machine; nothing rebuilt", highlight=False)


def show_targets(devices: list) -> None:
    """Two tables that fit 80 columns without cutting a name (what runs there; its figures, each with a
    numbered source), then the sources; one item per line so that no name is split."""
    out = stdout()
    runs = Table(title="edgeft targets")
    for column in ("target", "aliases", "runtimes", "precisions"):
        runs.add_column(column, overflow="fold", no_wrap=column == "target")
    figures = Table(title=Text("their figures; [n] is the source, listed below"))
    for column in ("target", "peak T(FL)OPS", "GB/s", "RAM GB"):
        figures.add_column(column, overflow="fold", no_wrap=column == "target")
    sources: dict[str, int] = {}

    def cited(figure: Any, label: str = "") -> str:
        number = sources.setdefault(figure.source, len(sources) + 1)
        return f"{label}{figure.value:g} [{number}]"

    for t in devices:
        runs.add_row(*(Text(s) for s in (t.name, *("\n".join(v) for v in (t.aliases, t.backends, t.precisions)))))
        peak = "\n".join(cited(f, f"{p}: ") for p, f in t.peak.items()) or "measured on use"
        figures.add_row(*(Text(s) for s in (t.name, peak, cited(t.memory_bandwidth) if t.memory_bandwidth else "",
                                              cited(t.ram) if t.ram else "")))
    out.print(runs)
    out.print(figures)
    for source, number in sources.items():
        out.print(f"[{number}] {source}", markup=False, highlight=False)


def show_report(rep: Any) -> None:
    """`report`: the latency rows and the files written."""
    show_rows(rep.rows, f"edgeft report · {rep.run.name}")
    console.print(f"wrote {rep.markdown} and {rep.html}", highlight=False)
    for path in rep.cards:
        console.print(f"wrote model card {path}", highlight=False)


def show_rows(rows: list[dict], title: str) -> None:
    """Latency rows as one table; estimates in italics."""
    from edgeft.report import COLUMNS

    table = Table(*COLUMNS, title=title)
    for row in rows:
        table.add_row(*(row[c] for c in COLUMNS), style="italic" if row["how"] == "estimated" else None)
    stdout().print(table)
