"""The `edgeft` command line: thin click commands over the library (DESIGN.md §House style 10)."""
from __future__ import annotations

import logging
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from edgeft.errors import EdgeftError

console = Console(stderr=True)


class RichProgress:
    """The training loop's progress sink: one rich bar per stage with loss, accuracy and ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task = None

    def start(self, stage: str, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total, info="")

    def advance(self, steps: int, **fields: float) -> None:
        info = " ".join(f"{k} {v:.4f}" for k, v in fields.items())
        self._bar.update(self._task, advance=steps, **({"info": info} if info else {}))

    def finish(self) -> None:
        self._bar.stop()


def _explicit(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The options the user actually gave (command line, not defaults)."""
    source = click.core.ParameterSource
    return {k: v for k, v in params.items()
            if ctx.get_parameter_source(k) in (source.COMMANDLINE, source.ENVIRONMENT)}


class EdgeftGroup(click.Group):
    """Turns EdgeftError into one red line on stderr and its exit code (the one place that does)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=EdgeftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeft")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """edgeft: ship a vision foundation model's knowledge to an edge device with few images."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


def _method_names() -> list[str]:
    from edgeft.compress.methods import METHODS

    return METHODS.names()


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with any of these options.")
@click.option("--teacher", multiple=True, help="timm name[.tag], a paper alias (bit_m_r50x1, …) or 'demo'; repeat for several.")
@click.option("--teacher-weights", multiple=True, help="Local teacher weights (.safetensors, .pth, BiT .npz), one per --teacher.")
@click.option("--student", help="timm model name of the student [resnet18].")
@click.option("--student-weights", help="PATH, 'imagenet', 'none' or 'auto' (imagenet; none with the demo teacher).")
@click.option("--data", help="ImageFolder directory, a .zip of one, or 'demo'.")
@click.option("--classes", help="Comma-separated subset of the class folders to use.")
@click.option("--fraction", type=float, help="Stratified fraction of the training images to keep.")
@click.option("--shots", type=int, help="Images per class to keep (instead of --fraction).")
@click.option("--val-fraction", type=float, help="Held-out share of a flat class-per-folder tree [0.2].")
@click.option("--seed", type=int, help="Seed for sampling, init and data order [0].")
@click.option("--method", help="Transfer method: " + ", ".join(["stl", "lp", "lp-ft", "kd", "fkd", "aft", "kdep", "…"]) + " (see `edgeft methods`).")
@click.option("--epochs", type=int, help="Epochs of the main stage (method default otherwise).")
@click.option("--steps", type=int, help="Optimiser steps of the main stage (overrides --epochs).")
@click.option("--batch-size", type=int, help="Batch size [64].")
@click.option("--lr", type=float, help="Learning rate of the main stage.")
@click.option("--weight-decay", type=float, help="Weight decay of the main stage.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw", "adam"]), help="Optimiser of the main stage.")
@click.option("--schedule", type=click.Choice(["cosine", "multistep", "constant"]), help="LR schedule.")
@click.option("--image-size", type=int, help="Training/inference image size (teacher default otherwise).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train [auto].")
@click.option("--workers", type=int, help="Data-loader worker processes [0].")
@click.option("--out", help="Run directory [runs/<time>-<method>].")
@click.option("--resume/--no-resume", default=None, help="Continue the run in --out from its last checkpoint.")
@click.option("--beta", help="aft: weight of the kernel distance, a number >= 0 or 'auto' (3/10/30 on a 10% hold-out) [auto].")
@click.option("--aft-weights", type=click.Choice(["learned", "identity"]), help="aft: learned feature weights or identity (ablation) [learned].")
@click.option("--aft-kernel", type=click.Choice(["linear", "rbf"]), help="aft: batch kernel (rbf: ablation) [linear].")
@click.option("--unlabeled", help="kdep: directory or .zip of distillation images [the labelled train images, labels unused].")
@click.option("--align", type=click.Choice(["svd", "linear", "channel-select"]), help="kdep: teacher→student dimension alignment [svd].")
@click.option("--transform", type=click.Choice(["pts", "none", "std-norm"]), help="kdep: transform of the aligned teacher target [pts].")
@click.pass_context
def compress(ctx: click.Context, config_file: str | None, **options: Any) -> None:
    """Transfer a teacher's knowledge into a small student with few labelled images."""
    from edgeft.compress.pipeline import run_compress
    from edgeft.config import CompressConfig, build_config

    explicit = _explicit(ctx, options)
    options = {k: (tuple(v) if v else None) if isinstance(v, tuple) else v for k, v in options.items()}
    if options.get("classes"):
        options["classes"] = tuple(c.strip() for c in options["classes"].split(",") if c.strip())
    cfg = build_config(CompressConfig, config_file, **options)
    summary = run_compress(cfg, {k: options[k] for k in explicit}, progress=RichProgress)
    _show_summary(summary)


@cli.command()
def methods() -> None:
    """List the transfer methods."""
    from edgeft.compress.methods import METHODS

    table = Table("method", "aliases", "teacher", "what it does")
    aliases = METHODS.aliases()
    for name in METHODS.names():
        cls = METHODS.get(name)
        table.add_row(name, ", ".join(a for a, n in aliases.items() if n == name),
                      "yes" if cls.needs_teacher else "", cls.summary)
    Console().print(table)


def _show_summary(summary: dict) -> None:
    table = Table("model", "name", "params (M)", "MMACs", "accuracy", title=f"edgeft compress · {summary['method']}")
    teacher, student = summary.get("teacher"), summary["student"]
    if teacher:
        acc = teacher["accuracy"]
        table.add_row("teacher (linear probe)", teacher["name"], f"{teacher['params'] / 1e6:.1f}", "",
                      "" if acc is None else f"{acc:.2%}")
    table.add_row("student", student["name"], f"{student['params'] / 1e6:.1f}", f"{student['macs'] / 1e6:.0f}",
                  f"{student['accuracy']:.2%}")
    Console().print(table)
    data = summary["data"]
    Console().print(f"{data['train_images']} training / {data['val_images']} validation images, "
                    f"{data['classes']} classes, {summary['seconds']:.0f} s")


main = cli
