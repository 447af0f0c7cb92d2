"""The `edgeft` command line: thin click commands over the library (DESIGN.md §House style 10)."""
from __future__ import annotations

import logging
from typing import Any

import click
from rich.logging import RichHandler
from rich.text import Text

from edgeft import cli_options as opt
from edgeft.console import (RichProgress, console, say, show_exports, show_methods, show_rebuilt, show_report,
                            show_rows, show_summary, show_targets)
from edgeft.errors import EdgeftError


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


@cli.command(cls=opt.CompressCommand)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with any of these options.")
@click.option("--teacher", multiple=True, help="timm name[.tag], a paper alias (bit_m_r50x1, …) or 'demo'; repeat for several.")
@click.option("--teacher-weights", multiple=True, help="Local teacher weights (.safetensors, .pth, BiT .npz), one per --teacher.")
@click.option("--student", help="timm model name of the student [resnet18].")
@click.option("--student-weights", help="PATH, 'imagenet', 'none' or 'auto' (imagenet; none with the demo teacher).")
@click.option("--data", help="ImageFolder directory, a .zip of one, or 'demo'.")
@opt.few_data
@click.option("--val-fraction", type=float, help="Held-out share of a flat class-per-folder tree [0.2].")
@opt.seed("sampling, init and data order")
@click.option("--baseline/--no-baseline", default=None, help="With a teacher: also fine-tune the same student alone (stl) and report the method's gain over it [on].")
@click.option("--epochs", type=int, help="Epochs of the main stage (method default otherwise).")
@click.option("--steps", type=int, help="Optimiser steps of the main stage (overrides --epochs).")
@opt.batch_size()
@click.option("--lr", type=float, help="Learning rate of the main stage.")
@click.option("--weight-decay", type=float, help="Weight decay of the main stage.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw", "adam"]), help="Optimiser of the main stage.")
@click.option("--schedule", type=click.Choice(["cosine", "multistep", "constant"]), help="LR schedule.")
@click.option("--image-size", type=int, help="The student's training/inference image size [the images' own (median short side), at most the teacher's].")
@click.option("--teacher-image-size", type=int, help="The resolution the teacher sees (images are resized to it) [its pretrained input size].")
@click.option("--head-init", help="The student's new classification head: default (its architecture's own init) or zero (BiT's fine-tuning rule; EfficientNet/MobileNet's own init gives a few-class head large random logits) [default].")
@opt.device("train")
@click.option("--workers", type=int, help="Data-loader worker processes [0].")
@click.option("--out", help="Run directory [runs/<time>-<method>].")
@click.option("--resume/--no-resume", default=None, help="Continue the run in --out from its last checkpoint.")
@click.option("--kernels", type=click.Choice(["auto", "cuda", "torch"]), help="Loss kernels: fused CUDA (cuda), PyTorch reference (torch), or cuda where it runs (auto) [auto].")
@click.option("--format", "formats", help="Export right after compressing: comma-separated onnx, openvino, tensorrt.")
@click.option("--precision", "precisions", help="Precisions of those exports: comma-separated fp32, fp16, int8 [fp32].")
@click.option("--target", help="Deploy to this device (see `edgeft targets`): export its formats, profile, write the report.")
@click.option("--max-drop", type=float, metavar="POINTS", help=opt.MAX_DROP_HELP)
@click.option("--batch-profile", help=opt.BATCH_PROFILE_HELP)
@click.option("--teacher-from", help="A finished run directory whose model (e.g. irf's adapted teacher) is the teacher.")
@click.option("--fail-if", "fail_if", help=opt.FAIL_IF_HELP)
@click.option("--strict", is_flag=True, help=opt.STRICT_HELP)
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
    show = Show(preflight=lambda checked: say(checked.summary()), summary=show_summary, exports=show_exports,
                report=show_report, gate=say)
    run_line(build_config(CompressConfig, config_file, **options), {k: options[k] for k in explicit},
             fail_if=fail_if, strict=strict, progress=RichProgress, show=show)


def _gate(expression: str | None, command: str, **facts: Any) -> Any:
    """The parsed --fail-if, checked at the command's entry (None when not given)."""
    from edgeft.gate import for_command

    return for_command(expression, command, **facts) if expression else None


def _judge(gate: Any, rows: list[dict]) -> None:
    """Raises GateFailed (exit 3) naming the violated figures, else prints that the gate passed."""
    say(gate.judge(rows))


@cli.command()
@click.option("--data", help="Upstream ImageFolder directory or .zip (train/ is trained on; val/ or test/ gives the held-out images); not needed with --resume.")
@click.option("--out", required=True, help="Pack directory to write (weights + pack.json + card.md, no images).")
@click.option("--work", help="Checkpoints, metrics and the held-out grid [<out>-work].")
@click.option("--classes", help="Comma-separated subset of the class folders.")
@click.option("--image-size", type=int, help="Training image size [32].")
@click.option("--steps", type=int, help="Optimiser steps (overrides --epochs).")
@click.option("--epochs", type=int, help="Epochs over the upstream images [20].")
@opt.batch_size()
@click.option("--lr", type=float, help="Adam learning rate of generator and discriminator [4e-4].")
@opt.seed("init and data order")
@click.option("--holdout", type=int, help="Held-out images for the reconstruction PSNR [500].")
@click.option("--channels", type=int, help="Base width of the VQGAN [64].")
@click.option("--codebook-size", type=int, help="Codebook entries [512].")
@click.option("--disc-start", type=int, help="Step at which the PatchGAN starts [half of training].")
@click.option("--eval-every", type=int, help="Steps between held-out PSNR rows in <work>/metrics.jsonl [1000].")
@click.option("--half/--no-half", default=None, help="Store the pack's weights in fp16.")
@opt.device("train")
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
@opt.few_data
@opt.seed("the sources' sampling, the masks and the sampling")
@click.option("--batch-size", type=int, help="Images completed together [64].")
@click.option("--shard", help="i/n: make every n-th batch from batch i; the n shards together = the unsharded output [0/1].")
@opt.device("generate")
@opt.digg_sampling
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
@click.option("--max-drop", type=float, metavar="POINTS", help=opt.MAX_DROP_HELP)
@click.option("--batch-profile", help=opt.BATCH_PROFILE_HELP)
@click.option("--fail-if", "fail_if", help=opt.FAIL_IF_HELP)
@click.option("--strict", is_flag=True, help=opt.STRICT_HELP)
def export_command(run_dir: str, formats: str, precisions: str, calib: int, images: int, onnx_file: str | None,
                   batch: int, max_drop: float | None, batch_profile: str | None, fail_if: str | None,
                   strict: bool) -> None:
    """Export a run's student to engines in RUN_DIR/engines/, each validated against PyTorch;
    one that fails is refused (with its reason) and the others go on."""
    gate = _gate(fail_if, "export")  # before the torch import below: a typo fails in a second
    from edgeft.export import BatchShape, export_run

    result = export_run(run_dir, _split(formats), _split(precisions), calib=calib, images=images, onnx=onnx_file,
                        batch=BatchShape.parse(batch, batch_profile), max_drop=max_drop)
    show_exports(result)
    result.check(strict)
    if gate:
        from edgeft.gate import export_rows

        _judge(gate, export_rows([r.to_json() for r in result.records]))


@cli.command()
def methods() -> None:
    """List the transfer methods."""
    from edgeft.compress.methods import METHODS

    show_methods(METHODS)


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
@click.option("--fail-if", "fail_if", help=opt.FAIL_IF_HELP)
@click.option("--rebuild", is_flag=True, help="Re-export here the engines of RUN_DIR built for another machine or runtime.")
def profile(engine: str, target: str, backend: str | None, precision: str | None, remote: str | None,
            token: str | None, json_out: str | None, fail_if: str | None, rebuild: bool, **measure: Any) -> None:
    """Latency of an engine file or of every engine of RUN_DIR on a target (measured or estimated);
    for RUN_DIR a lower precision is kept only where it is >= 1.02x faster (its export manifest says why not)."""
    from pathlib import Path

    from edgeft import artifacts, line
    from edgeft.gate import profile_rows
    from edgeft.report import summary_rows
    from edgeft.runtime.profile import ProfileConfig

    run = line.is_run_dir(Path(engine))
    gate = _gate(fail_if, "profile", target=target, run=run, remote=bool(remote))
    if rebuild:
        show_rebuilt(line.rebuild(engine, run, remote))
    records = line.profile(engine, target, backend, ProfileConfig(**measure), precision, remote, token)
    if json_out:
        artifacts.write_json(json_out, records)
    show_rows(summary_rows(records), f"edgeft profile · {target}")
    if gate:
        _judge(gate, profile_rows(records, engine if run else None))


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
    show_targets([TARGETS.get(n) for n in TARGETS.names()])


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

    show_report(report_run(run_dir))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--target", "targets", default="all", show_default=True,
              help="Comma-separated targets or 'all'; those without profiles are profiled first (host measured, others estimated).")
def card(run_dir: str, targets: str) -> None:
    """Write a model card per target: RUN_DIR/cards/<target>.md and .json (accuracy vs FP32, latency, memory)."""
    from edgeft.modelcard import make_cards

    for path in make_cards(run_dir, _split(targets)):
        console.print(f"wrote {path} and {path.with_suffix('.json').name}", highlight=False)


main = cli
