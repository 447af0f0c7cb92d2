"""The `edgeft` command line: thin click commands over the library (DESIGN.md §House style 10)."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from edgeft.errors import EdgeftError

# markup off: messages carry literal brackets (pip install 'edgeft[tensorrt]') that rich would eat
console = Console(stderr=True, markup=False)


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
            console.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=EdgeftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeft")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """edgeft: ship a vision foundation model's knowledge to an edge device with few images."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


BATCH_PROFILE_HELP = ("Dynamic batch axis with this MIN,OPT,MAX profile (e.g. 1,8,32; also the TensorRT "
                      "optimisation profile; profiled at each point) [static batch 1].")
MAX_DROP_HELP = ("INT8 may lose at most POINTS of accuracy on the held-out images: other calibrators, then the "
                 "most sensitive layers kept in float; INT8 is refused if the bound cannot hold [int8 tolerance: 2].")
STRICT_HELP = ("Exit 4 when any format × precision is refused (default: exit 0 when each format has an "
               "engine that passed; refused ones are listed with their reason).")
FAIL_IF_HELP = ('CI gate: exit 3 when this holds for any engine, e.g. "top1_drop>1.0 or p99_ms>8" '
                '(metrics: top1_drop, accuracy, agreement, size_mb, p50_ms, p90_ms, p99_ms, fps, first_inference_ms, peak_mb).')


def _csv(cast):
    """A click callback: 'a,b' → (cast(a), cast(b)); a bad item is a usage error (exit 2)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        try:
            return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r}: give comma-separated {cast.__name__} values") from None

    return parse


DIGG_OPTIONS = [
    click.option("--mask-shapes", callback=_csv(str), help="DIGG masks on the code grid: box (one rectangle), block (scattered squares) [box,block]."),
    click.option("--mask-ratio", callback=_csv(float), help="DIGG: masked share of the code grid, MIN,MAX drawn uniformly [0.25,0.75]."),
    click.option("--temperature", type=float, help="DIGG sampling temperature [1.0]."),
    click.option("--top-k", type=int, help="DIGG: sample among the k most likely codes [100]."),
]


FEW_DATA_OPTIONS = [
    click.option("--classes", help="Comma-separated subset of the class folders to use."),
    click.option("--fraction", type=float, help="Stratified fraction of the training images to keep."),
    click.option("--shots", type=int, help="Images per class to keep (instead of --fraction)."),
]


def _options(options: list):
    """A decorator applying a shared list of click options in order."""

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_digg_options = _options(DIGG_OPTIONS)  # shared by `compress` and `generate`
_few_data_options = _options(FEW_DATA_OPTIONS)


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with any of these options.")
@click.option("--teacher", multiple=True, help="timm name[.tag], a paper alias (bit_m_r50x1, …) or 'demo'; repeat for several.")
@click.option("--teacher-weights", multiple=True, help="Local teacher weights (.safetensors, .pth, BiT .npz), one per --teacher.")
@click.option("--student", help="timm model name of the student [resnet18].")
@click.option("--student-weights", help="PATH, 'imagenet', 'none' or 'auto' (imagenet; none with the demo teacher).")
@click.option("--data", help="ImageFolder directory, a .zip of one, or 'demo'.")
@_few_data_options
@click.option("--val-fraction", type=float, help="Held-out share of a flat class-per-folder tree [0.2].")
@click.option("--seed", type=int, help="Seed for sampling, init and data order [0].")
@click.option("--method", help="Transfer method, from the METHODS registry (list: `edgeft methods`) [aft with a teacher, else stl].")
@click.option("--baseline/--no-baseline", default=None, help="With a teacher: also fine-tune the same student alone (stl) and report the method's gain over it [on].")
@click.option("--epochs", type=int, help="Epochs of the main stage (method default otherwise).")
@click.option("--steps", type=int, help="Optimiser steps of the main stage (overrides --epochs).")
@click.option("--batch-size", type=int, help="Batch size [64].")
@click.option("--lr", type=float, help="Learning rate of the main stage.")
@click.option("--weight-decay", type=float, help="Weight decay of the main stage.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw", "adam"]), help="Optimiser of the main stage.")
@click.option("--schedule", type=click.Choice(["cosine", "multistep", "constant"]), help="LR schedule.")
@click.option("--image-size", type=int, help="The student's training/inference image size [the images' own (median short side), at most the teacher's].")
@click.option("--teacher-image-size", type=int, help="The resolution the teacher sees (images are resized to it) [its pretrained input size].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train [auto].")
@click.option("--workers", type=int, help="Data-loader worker processes [0].")
@click.option("--out", help="Run directory [runs/<time>-<method>].")
@click.option("--resume/--no-resume", default=None, help="Continue the run in --out from its last checkpoint.")
@click.option("--kernels", type=click.Choice(["auto", "cuda", "torch"]), help="Loss kernels: fused CUDA (cuda), PyTorch reference (torch), or cuda where it runs (auto) [auto].")
@click.option("--format", "formats", help="Export right after compressing: comma-separated onnx, openvino, tensorrt.")
@click.option("--precision", "precisions", help="Precisions of those exports: comma-separated fp32, fp16, int8 [fp32].")
@click.option("--target", help="Deploy to this device (see `edgeft targets`): export its formats, profile, write the report.")
@click.option("--max-drop", type=float, metavar="POINTS", help=MAX_DROP_HELP)
@click.option("--batch-profile", help=BATCH_PROFILE_HELP)
@click.option("--beta", help="aft: weight of the kernel distance, a number >= 0, or 'auto' to pick 3/10/30 on a 10% hold-out (~4x the training) [10].")
@click.option("--aft-weights", type=click.Choice(["learned", "identity"]), help="aft: learned feature weights or identity (ablation) [learned].")
@click.option("--aft-kernel", type=click.Choice(["linear", "rbf"]), help="aft: batch kernel (rbf: ablation) [linear].")
@click.option("--aft-augment/--no-aft-augment", default=None, help="aft: random crop/flip of the student's images; the teacher's cached features stay those of the whole image [on].")
@click.option("--kd-targets", type=click.Choice(["cached", "online"]), help="kd: the teacher's logits of each whole training image, computed once (cached), or of every augmented batch (online: one teacher pass per step) [cached].")
@click.option("--unlabeled", help="kdep: directory or .zip of distillation images, or digg:PACK for DIGG images of the few [the labelled train images, labels unused]; --kd-data upstream: the upstream images.")
@click.option("--align", type=click.Choice(["svd", "linear", "channel-select"]), help="kdep: teacher→student dimension alignment [svd].")
@click.option("--transform", type=click.Choice(["pts", "none", "std-norm"]), help="kdep: transform of the aligned teacher target [pts].")
@click.option("--pack", help="irf, digg, ota, digg-irf: pack directory made by `edgeft prime` (DIGG: with a transformer), or 'demo'.")
@click.option("--search/--no-search", default=None, help="irf: pick the paper's lr/wd grids on a 10% hold-out of train (~7x the training).")
@click.option("--deliver-data", type=click.Choice(["rec", "original", "mixed"]), help="irf: images of the frozen-backbone head stage (ablation) [rec].")
@click.option("--calib-data", type=click.Choice(["original", "rec", "mixed"]), help="irf: images of the all-parameter stage (ablation) [original].")
@click.option("--teacher-from", help="A finished run directory whose model (e.g. irf's adapted teacher) is the teacher.")
@click.option("--kd-data", type=click.Choice(["digg", "upstream", "raw"]), help="digg, ota, digg-irf: distillation images: DIGG-generated, --unlabeled upstream images (same count) or the few raw images [digg].")
@click.option("--n-generated", type=int, help="digg, ota, digg-irf, kdep with digg:PACK: images to generate [10 per training image].")
@_digg_options
@click.option("--fail-if", "fail_if", help=FAIL_IF_HELP)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.pass_context
def compress(ctx: click.Context, config_file: str | None, fail_if: str | None, strict: bool, **options: Any) -> None:
    """Transfer a teacher's knowledge into a small student with few labelled images."""
    from edgeft.config import CompressConfig, build_config
    from edgeft.line import Show, run_line

    explicit = _explicit(ctx, options)
    options = {k: (tuple(v) if v else None) if isinstance(v, tuple) else v for k, v in options.items()}
    for key in ("classes", "formats", "precisions"):
        if options.get(key):
            options[key] = _split(options[key])
    show = Show(preflight=lambda checked: _say(checked.summary()), summary=_show_summary, exports=_show_exports,
                report=_show_report, gate=_say)
    run_line(build_config(CompressConfig, config_file, **options), {k: options[k] for k in explicit},
             fail_if=fail_if, strict=strict, progress=RichProgress, show=show)


def _say(line: str) -> None:
    """One line on stderr (the pre-flight's summary, the gate's verdict), printed as it is."""
    console.print(line, highlight=False, soft_wrap=True)


def _gate(expression: str | None, command: str, **facts: Any) -> Any:
    """The parsed --fail-if, checked at the command's entry (None when not given)."""
    from edgeft.gate import for_command

    return for_command(expression, command, **facts) if expression else None


def _judge(gate: Any, rows: list[dict]) -> None:
    """Raises GateFailed (exit 3) naming the violated figures, else prints that the gate passed."""
    _say(gate.judge(rows))


@cli.command()
@click.option("--data", help="Upstream ImageFolder directory or .zip (train/ is trained on; val/ or test/ gives the held-out images); not needed with --resume.")
@click.option("--out", required=True, help="Pack directory to write (weights + pack.json + card.md, no images).")
@click.option("--work", help="Checkpoints, metrics and the held-out grid [<out>-work].")
@click.option("--classes", help="Comma-separated subset of the class folders.")
@click.option("--image-size", type=int, help="Training image size [32].")
@click.option("--steps", type=int, help="Optimiser steps (overrides --epochs).")
@click.option("--epochs", type=int, help="Epochs over the upstream images [20].")
@click.option("--batch-size", type=int, help="Batch size [64].")
@click.option("--lr", type=float, help="Adam learning rate of generator and discriminator [4e-4].")
@click.option("--seed", type=int, help="Seed of init and data order [0].")
@click.option("--holdout", type=int, help="Held-out images for the reconstruction PSNR [500].")
@click.option("--channels", type=int, help="Base width of the VQGAN [64].")
@click.option("--codebook-size", type=int, help="Codebook entries [512].")
@click.option("--disc-start", type=int, help="Step at which the PatchGAN starts [half of training].")
@click.option("--eval-every", type=int, help="Steps between held-out PSNR rows in <work>/metrics.jsonl [1000].")
@click.option("--half/--no-half", default=None, help="Store the pack's weights in fp16.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train [auto].")
@click.option("--resume/--no-resume", default=None, help="Continue the prime run of --out (or add/extend its transformer).")
@click.option("--transformer-steps", type=int, help="Then train DIGG's latent transformer this many steps (0: VQGAN only) [0].")
@click.option("--transformer-layers", type=int, help="Transformer blocks [4].")
@click.option("--transformer-heads", type=int, help="Attention heads per block [4].")
@click.option("--transformer-width", type=int, help="Transformer width [192].")
@click.option("--transformer-lr", type=float, help="AdamW learning rate of the transformer [3e-4].")
@click.option("--transformer-batch-size", type=int, help="Transformer batch size [64].")
@click.pass_context
def prime(ctx: click.Context, **options: Any) -> None:
    """Train a VQGAN on upstream images once and write a portable pack for `--method irf` (OTA §3.1);
    with --transformer-steps also the latent transformer that DIGG samples from (§3.2)."""
    from edgeft.compress.generative.prime import prime as run_prime
    from edgeft.config import PrimeConfig, build_config

    if options.get("classes"):
        options["classes"] = _split(options["classes"])
    meta = run_prime(build_config(PrimeConfig, **options), _explicit(ctx, options), progress=RichProgress())
    held = meta["heldout"]
    console.print(f"wrote {options['out']}: held-out PSNR {held['psnr_db']:.2f} dB on {held['images']} images, "
                  f"{held['codes_used']} codes in use, {meta['training']['seconds']:.0f} s", highlight=False)
    if "transformer" in meta:
        nll = meta["transformer"]["heldout"]
        console.print(f"transformer: held-out NLL {nll['nll']:.3f} nats per code (uniform {nll['uniform_nll']:.3f}), "
                      f"{meta['transformer']['training']['steps']} steps", highlight=False)


@cli.command()
@click.option("--pack", required=True, help="Pack with a latent transformer (`edgeft prime --transformer-steps N`), or 'demo'.")
@click.option("--data", required=True, help="The few downstream images: ImageFolder directory, .zip or 'demo' (their train split is used).")
@click.option("--out", required=True, help="Output directory: <class>/<index>.png (ImageFolder) + manifest.jsonl.")
@click.option("--n", type=int, help="Images to generate, over all shards [1000].")
@_few_data_options
@click.option("--seed", type=int, help="Seed of the sources' sampling, the masks and the sampling [0].")
@click.option("--batch-size", type=int, help="Images completed together [64].")
@click.option("--shard", help="i/n: make every n-th batch from batch i; the n shards together = the unsharded output [0/1].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to generate [auto].")
@_digg_options
def generate(**options: Any) -> None:
    """Generate downstream-looking images from few images with a pack's VQGAN and transformer (DIGG, OTA §3.2)."""
    from edgeft.compress.generative.digg import run_generate
    from edgeft.config import GenerateConfig, build_config

    if options.get("classes"):
        options["classes"] = _split(options["classes"])
    done = run_generate(build_config(GenerateConfig, **options), progress=RichProgress())
    speed = f"{done['images_per_s']:.1f} images/s on {done['device']}" if done["images_per_s"] else "nothing left to make"
    console.print(f"wrote {done['made']} images (shard {done['shard']}) into {done['out']}, {done['images']} there in all; "
                  f"{speed}", highlight=False)


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "formats", default="onnx", show_default=True,
              help="Comma-separated engine formats: onnx, openvino, tensorrt.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated precisions: fp32, fp16, int8.")
@click.option("--calib", type=int, default=256, show_default=True, help="Training images that calibrate int8.")
@click.option("--images", type=int, default=512, show_default=True,
              help="Held-out images that validate each engine against PyTorch (>= 256 advised).")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False),
              help="Start from this fp32 ONNX of the student instead of exporting it again.")
@click.option("--batch", type=int, default=1, show_default=True, help="Static batch of the engines (edge targets run 1).")
@click.option("--max-drop", type=float, metavar="POINTS", help=MAX_DROP_HELP)
@click.option("--batch-profile", help=BATCH_PROFILE_HELP)
@click.option("--fail-if", "fail_if", help=FAIL_IF_HELP)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
def export_command(run_dir: str, formats: str, precisions: str, calib: int, images: int, onnx_file: str | None,
                   batch: int, max_drop: float | None, batch_profile: str | None, fail_if: str | None,
                   strict: bool) -> None:
    """Export a run's student to engines in RUN_DIR/engines/, each validated against PyTorch;
    one that fails is refused (with its reason) and the others go on."""
    gate = _gate(fail_if, "export")  # before the torch import below: a typo fails in a second
    from edgeft.export import BatchShape, export_run

    result = export_run(run_dir, _split(formats), _split(precisions), calib=calib, images=images, onnx=onnx_file,
                        batch=BatchShape.parse(batch, batch_profile), max_drop=max_drop)
    _show_exports(result)
    result.check(strict)
    if gate:
        from edgeft.gate import export_rows

        _judge(gate, export_rows([r.to_json() for r in result.records]))


def _show_exports(result: Any) -> None:
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
    Console(markup=False).print(table)
    lines = [f"{o['format']} {o['precision']} refused: {o['why']}" for o in outcomes if o["status"] == "refused"]
    lines += [f"{r.format} {r.precision}: {line}" for r in result.records for line in (r.note, describe(r.quantization))
              if line]
    for line in lines:
        Console(markup=False).print(line, highlight=False, soft_wrap=True)


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
    Console(markup=False).print(table)


def _show_summary(summary: dict) -> None:
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
    Console(markup=False).print(table)
    if baseline:
        gain = summary["gain_over_baseline"] * 100
        Console(markup=False).print(f"{summary['method']} vs fine-tuning alone: {gain:+.2f} accuracy points",
                                    highlight=False)
    data = summary["data"]
    Console(markup=False).print(f"{data['train_images']} training / {data['val_images']} validation images, "
                    f"{data['classes']} classes, {summary['seconds']:.0f} s")


@cli.command()
@click.argument("engine", type=click.Path())
@click.option("--target", default="host", show_default=True,
              help="Device or alias (`edgeft targets`): host is measured, others estimated unless --remote.")
@click.option("--backend", help="onnxruntime, openvino, tensorrt or torch [by file type].")
@click.option("--precision", help="Precision of an estimate or of an OpenVINO CPU run [the target's].")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch of the latency runs.")
@click.option("--threads", type=int, help="CPU threads of the runtime [its default].")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs first.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed runs, at least.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds, at least.")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Largest batch of the throughput sweep.")
@click.option("--sweep/--no-sweep", default=True,
              help="Throughput over batch 1, 2, 4, … (a run's dynamic engine: its profile points; a static one: its batch) [on].")
@click.option("--layers/--no-layers", default=True, help="Per-layer times from the backend's profiler [on].")
@click.option("--remote", help="URL of an `edgeft agent` on the device, e.g. http://jetson.local:8765.")
@click.option("--token", envvar="EDGEFT_TOKEN", help="The agent's token [$EDGEFT_TOKEN].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the records here.")
@click.option("--fail-if", "fail_if", help=FAIL_IF_HELP)
@click.option("--rebuild", is_flag=True, help="Re-export here the engines of RUN_DIR built for another machine or runtime.")
def profile(engine: str, target: str, backend: str | None, precision: str | None, remote: str | None,
            token: str | None, json_out: str | None, fail_if: str | None, rebuild: bool, **measure: Any) -> None:
    """Latency of an engine file or of every engine of RUN_DIR on a target (measured or estimated);
    for RUN_DIR a lower precision is kept only where it is >= 1.02x faster (export.json says why not)."""
    from pathlib import Path

    from edgeft import artifacts, line
    from edgeft.gate import profile_rows
    from edgeft.report import summary_rows
    from edgeft.runtime.profile import ProfileConfig

    run = line.is_run_dir(Path(engine))
    gate = _gate(fail_if, "profile", target=target, run=run, remote=bool(remote))
    if rebuild:
        _show_rebuilt(line.rebuild(engine, run, remote))
    records = line.profile(engine, target, backend, ProfileConfig(**measure), precision, remote, token)
    if json_out:
        artifacts.write_json(json_out, records)
    _show_rows(summary_rows(records), f"edgeft profile · {target}")
    if gate:
        _judge(gate, profile_rows(records, engine if run else None))


def _show_rebuilt(rebuilt: Any) -> None:
    """`profile --rebuild`: the re-exported engines (exit 4 when one is refused), or that none was stale."""
    if rebuilt.requested:
        _show_exports(rebuilt)
        rebuilt.check()
    else:
        console.print("--rebuild: every engine fits this machine; nothing rebuilt", highlight=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON (every figure with its source).")
@click.option("--calibrate", "backends", help="Measure this host's efficiency for these backends (e.g. onnxruntime,openvino).")
@click.option("--threads", type=int, help="CPU threads for --calibrate [runtime default].")
def targets(as_json: bool, backends: str | None, threads: int | None) -> None:
    """List the edge targets (peaks, bandwidth, runtimes, sources); calibrate the estimator on this host."""
    import json

    from edgeft.targets import TARGETS

    if backends:
        from edgeft.runtime.calibrate import calibrate_host

        for name in _split(backends):
            cal = calibrate_host(name, threads)
            console.print(f"{name}: efficiency {cal.efficiency:.3f}, {cal.overhead_ms * 1e3:.1f} µs per kernel, "
                          f"fit error {cal.fit_error:.1%}", highlight=False)
    if as_json:
        click.echo(json.dumps([TARGETS.get(n).to_json() for n in TARGETS.names()], indent=2))
        return
    _show_targets([TARGETS.get(n) for n in TARGETS.names()])


def _show_targets(devices: list) -> None:
    """Two tables that fit 80 columns without cutting a name (what runs there; its figures, each with a
    numbered source), then the sources; one item per line so that no name is split."""
    out = Console(markup=False)
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


@cli.command()
@click.option("--token", envvar="EDGEFT_TOKEN", required=True, help="Shared secret every request must carry [$EDGEFT_TOKEN].")
@click.option("--port", type=int, default=8765, show_default=True, help="TCP port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the agent to the network.")
@click.option("--max-upload-mb", type=float, default=512, show_default=True, help="Largest engine upload accepted.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Private upload directory [a fresh temporary one].")
@click.option("--name", help="Target name reported with the measurements [hostname].")
def agent(**options: Any) -> None:
    """Serve latency measurements on this device for `edgeft profile --remote` (numpy + runtime only)."""
    from edgeft.runtime.agent import AgentConfig, AgentServer

    server = AgentServer(AgentConfig(**options))
    console.print(f"edgeft agent listening on {server.url} (uploads under {server.storage}); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.md, a self-contained report.html and cards/<target>.md|json per profiled target."""
    from edgeft.line import report_run

    _show_report(report_run(run_dir))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--target", "targets", default="all", show_default=True,
              help="Comma-separated targets or 'all'; those without profiles are profiled first (host measured, others estimated).")
def card(run_dir: str, targets: str) -> None:
    """Write a model card per target: RUN_DIR/cards/<target>.md and .json (accuracy vs FP32, latency, memory)."""
    from edgeft.modelcard import make_cards

    for path in make_cards(run_dir, _split(targets)):
        console.print(f"wrote {path} and {path.with_suffix('.json').name}", highlight=False)


def _show_report(rep: Any) -> None:
    _show_rows(rep.rows, f"edgeft report · {rep.run.name}")
    console.print(f"wrote {rep.markdown} and {rep.html}", highlight=False)
    for path in rep.cards:
        console.print(f"wrote model card {path}", highlight=False)


def _show_rows(rows: list[dict], title: str) -> None:
    from edgeft.report import COLUMNS

    table = Table(*COLUMNS, title=title)
    for row in rows:
        table.add_row(*(row[c] for c in COLUMNS), style="italic" if row["how"] == "estimated" else None)
    Console(markup=False).print(table)


main = cli
