"""`--fail-if "top1_drop>1.0 or p99_ms>8"`: a CI gate over the figures a command produced.

The expression is parsed by a small recursive-descent parser (never `eval`): comparisons
`metric op number` with op one of < <= > >= == !=, joined by `and` / `or`, with parentheses.
It is checked at the command's entry against the metrics that command can produce, so a
typo fails in a second, not after training. After the work it is evaluated on every row
(one per engine, or per engine × target for profiles); a row where it holds violates the
gate, and `GateFailed` (exit code 3) names each such row's true comparisons.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from edgeft.artifacts import ExportManifest, ProfileManifest, RunDir
from edgeft.errors import EdgeftError
from edgeft.figures import throughput
from edgeft.precision_policy import dropped
from edgeft.targets import get_target

METRICS = {
    "top1_drop": "accuracy points lost vs PyTorch fp32 on the held-out images (export validation)",
    "accuracy": "top-1 accuracy in % (an engine on the held-out images; without engines the student on validation)",
    "agreement": "top-1 agreement with PyTorch fp32 in %",
    "size_mb": "engine file size in MB",
    "p50_ms": "median latency in ms (batch of the profile)",
    "p90_ms": "90th-percentile latency in ms (measured only)",
    "p99_ms": "99th-percentile latency in ms (measured only)",
    "fps": "images per second at the profiled batch: batch × 1000 / p50 ms (edgeft.figures)",
    "first_inference_ms": "time to first inference: engine load + first run, ms (measured only)",
    "peak_mb": "peak resident memory added by loading and running the engine, MB (measured only)",
}
EXPORT_METRICS = ("top1_drop", "accuracy", "agreement", "size_mb")
ESTIMATED_METRICS = ("p50_ms", "fps")
MEASURED_METRICS = ("p50_ms", "p90_ms", "p99_ms", "fps", "first_inference_ms", "peak_mb")

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)"
                   r"|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))")


class GateFailed(EdgeftError):
    """The --fail-if expression holds for at least one engine (exit code 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Comparison:
    metric: str
    op: str
    limit: float

    def holds(self, row: dict[str, Any]) -> bool:
        return OPS[self.op](row[self.metric], self.limit)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"


@dataclass(frozen=True)
class Junction:
    kind: str  # "and" | "or"
    parts: tuple["Node", ...]

    def holds(self, row: dict[str, Any]) -> bool:
        results = [p.holds(row) for p in self.parts]
        return all(results) if self.kind == "and" else any(results)


Node = Union[Comparison, Junction]


@dataclass(frozen=True)
class Gate:
    """A parsed --fail-if expression."""

    text: str
    root: Node

    @property
    def comparisons(self) -> list[Comparison]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Comparison):
                out.append(node)
            else:
                stack.extend(reversed(node.parts))
        return out

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(c.metric for c in self.comparisons))

    def require(self, available: tuple[str, ...] | list[str], what: str) -> None:
        """Fails (exit 2) when the expression names a metric that `what` does not produce."""
        missing = [m for m in self.metrics if m not in available]
        if missing:
            raise EdgeftError(f"--fail-if: {', '.join(missing)} not measured by {what}; "
                              f"it gives {', '.join(available) or 'no metric'}")

    def violations(self, rows: list[dict[str, Any]]) -> list[str]:
        """'engine: metric value (limit op x)' for every row where the expression holds."""
        out = []
        for row in rows:
            absent = [m for m in self.metrics if not isinstance(row.get(m), (int, float))]
            if absent:
                raise EdgeftError(f"--fail-if: {', '.join(absent)} was not measured for {row['name']}; "
                                  f"that row has {', '.join(k for k in row if k in METRICS) or 'no metric'}")
            if self.root.holds(row):
                figures = ", ".join(f"{c.metric} {row[c.metric]:.4g} ({c})" for c in self.comparisons if c.holds(row))
                out.append(f"{row['name']}: {figures}")
        return out

    def judge(self, rows: list[dict[str, Any]]) -> str:
        """Raises GateFailed naming the violated figures; returns a one-line pass message."""
        if not rows:
            raise EdgeftError(f'--fail-if "{self.text}": nothing to judge (no engine figures were produced)')
        bad = self.violations(rows)
        if bad:
            raise GateFailed(f'--fail-if "{self.text}" violated by {len(bad)} of {len(rows)}: ' + "; ".join(bad))
        return f'--fail-if "{self.text}": passed on {len(rows)} ({", ".join(r["name"] for r in rows)})'


def parse(text: str) -> Gate:
    """Parses an expression; bad syntax or an unknown metric → EdgeftError naming --fail-if."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            _bad(text, f"unexpected {text[pos:].strip()[:12]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not tokens:
        _bad(text, "empty expression")
    parser = _Parser(text, tokens)
    root = parser.expression()
    if parser.i != len(tokens):
        _bad(text, f"unexpected {tokens[parser.i][1]!r}")
    return Gate(text, root)


class _Parser:
    """expression := conjunction ('or' conjunction)*; conjunction := factor ('and' factor)*."""

    def __init__(self, text: str, tokens: list[tuple[str, str]]) -> None:
        self.text, self.tokens, self.i = text, tokens, 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, kind: str, what: str) -> str:
        got = self.peek()
        if got[0] != kind:
            _bad(self.text, f"expected {what}, got {got[1]!r}" if got[1] else f"expected {what} at the end")
        self.i += 1
        return got[1]

    def junction(self, word: str, part: Callable[[], Node]) -> Node:
        parts = [part()]
        while self.peek() == ("word", word):
            self.i += 1
            parts.append(part())
        return parts[0] if len(parts) == 1 else Junction(word, tuple(parts))

    def expression(self) -> Node:
        return self.junction("or", lambda: self.junction("and", self.factor))

    def factor(self) -> Node:
        if self.peek() == ("paren", "("):
            self.i += 1
            node = self.expression()
            self.take("paren", "')'")
            return node
        metric = self.take("word", "a metric name")
        if metric not in METRICS:
            raise EdgeftError(f"--fail-if: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        op = self.take("op", "one of < <= > >= == !=")
        return Comparison(metric, op, float(self.take("num", "a number")))


def _bad(text: str, why: str) -> None:
    raise EdgeftError(f'--fail-if "{text}": {why}; write e.g. "top1_drop>1.0 or p99_ms>8" '
                      f"with metrics {', '.join(METRICS)}")


def for_command(text: str, command: str, *, exported: bool = False, target: str | None = None,
                run: bool = True, remote: bool = False) -> Gate:
    """Parses --fail-if at a command's entry and checks that the command produces its metrics.

    compress gives the student's accuracy, or the engines' export figures when it exports,
    plus the target's latency figures with --target; export gives the export figures;
    profile gives latency figures (all when measured, p50/fps when estimated) and, for a run
    directory, the export figures of each engine.
    """
    gate = parse(text)
    latency: tuple[str, ...] = ()
    if target is not None:
        latency = MEASURED_METRICS if remote or get_target(target).measured else ESTIMATED_METRICS
    if command == "export":
        metrics = EXPORT_METRICS
    elif command == "profile":
        metrics = (EXPORT_METRICS if run else ()) + latency
    else:
        metrics = (EXPORT_METRICS if exported else ("accuracy",)) + latency
    how = "" if target is None else f" on {target} ({'measured' if latency == MEASURED_METRICS else 'estimated'})"
    gate.require(metrics, f"`edgeft {command}`{how}" + ("" if run else " of an engine file"))
    return gate


def export_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gate rows from export records (ExportRecord.to_json() or export manifest rows)."""
    rows = []
    for r in records:
        row = {"name": f"{r['format']} {r['precision']}", "size_mb": r.get("size_bytes", 0) / 1e6}
        if isinstance(r.get("accuracy"), (int, float)):
            row["accuracy"] = 100 * r["accuracy"]
        if isinstance(r.get("accuracy"), (int, float)) and isinstance(r.get("reference_accuracy"), (int, float)):
            row["top1_drop"] = 100 * (r["reference_accuracy"] - r["accuracy"])
        if isinstance(r.get("top1_agreement"), (int, float)):
            row["agreement"] = 100 * r["top1_agreement"]
        rows.append(row)
    return rows


def profile_rows(records: list[dict[str, Any]], run_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Gate rows from profile records, joined with the run's export figures; the PyTorch student
    (the reference) and engines dropped as not faster (precision_check) are left out."""
    exports = {key: export_rows([r])[0] for key, r in ExportManifest.read(run_dir).by_key().items()} if run_dir else {}
    rows = []
    for r in records:
        if r.get("format") == "torch" or dropped(r):
            continue
        lat = r.get("latency_ms") or {}
        row = {k: v for k, v in exports.get((r.get("format"), r.get("precision")), {}).items() if k != "name"}
        row["name"] = f"{r.get('format')} {r.get('precision')} on {r.get('target')} ({r.get('label')})"
        row.update({f"{p}_ms": lat[p] for p in ("p50", "p90", "p99") if isinstance(lat.get(p), (int, float))})
        fps = throughput(r).images_per_s
        if fps is not None:
            row["fps"] = fps
        if r.get("label") == "measured":
            row["first_inference_ms"] = (r.get("load_ms") or 0) + (r.get("first_inference_ms") or 0)
            if isinstance((r.get("memory") or {}).get("peak_increase_mb"), (int, float)):
                row["peak_mb"] = r["memory"]["peak_increase_mb"]
        rows.append(row)
    return rows


def run_rows(run_dir: str | Path, target: str | None, exported: bool) -> list[dict[str, Any]]:
    """The rows of `edgeft compress`: the target's profiles, else the engines, else the student."""
    if target is not None:
        return profile_rows(ProfileManifest.read(run_dir, get_target(target).name).records, run_dir)
    if exported:
        return export_rows(ExportManifest.read(run_dir).engines)
    accuracy = RunDir(run_dir).read_summary().get("student", {}).get("accuracy")
    return [{"name": "student (PyTorch)", **({"accuracy": 100 * accuracy} if accuracy is not None else {})}]
