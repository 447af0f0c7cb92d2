"""Click options made from their declarations: each transfer method's Options dataclass (one help group
per declaring class, read from the METHODS registry on every use) and the flags several commands share."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click

from edgeft.compress.methods import METHODS, method_entry
from edgeft.compress.methods.options import GenerationOptions, flag, option_fields, option_types


def csv(cast: Callable[[str], Any]) -> Callable:
    """A click callback: 'a,b' → (cast(a), cast(b)); a bad item is a usage error (exit 2)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        try:
            return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r}: give comma-separated {cast.__name__} values") from None

    return parse


def option_spec(field: dataclasses.Field, kind: Any) -> tuple[list[str], dict[str, Any]]:
    """Flags and settings of one declared field's click option; not given is None, so that YAML and the
    declared default apply."""
    shown = field.metadata.get("default_text") or _as_text(field.default)
    settings: dict[str, Any] = {"help": f"{field.metadata['help'][0].upper()}{field.metadata['help'][1:]} [{shown}]."}
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if _optional(kind) else kind
    if base is bool:
        return [f"{flag(field.name)}/--no-{flag(field.name)[2:]}"], {**settings, "default": None}
    if typing.get_origin(base) is tuple:
        return [flag(field.name)], {**settings, "callback": csv(typing.get_args(base)[0])}
    choices = field.metadata.get("choices")
    return [flag(field.name)], {**settings, "type": click.Choice(choices) if choices else base}


def method_option_groups() -> list[tuple[str, list[click.Option]]]:
    """(title, options) per Options class that declares options, in the methods' registration order;
    the title names the methods that take them."""
    users: dict[type, list[str]] = {}
    for name in METHODS.names():
        for cls in reversed(METHODS.get(name).options.__mro__):
            if dataclasses.is_dataclass(cls) and option_fields(cls):
                users.setdefault(cls, []).append(name)
    return [(f"{cls.__doc__.splitlines()[0].rstrip('.')} ({', '.join(names)})", fields_as_options(cls))
            for cls, names in users.items()]


def fields_as_options(cls: type) -> list[click.Option]:
    """Click options for the fields `cls` declares itself."""
    return [click.Option(decls, **settings) for decls, settings in _specs(cls)]


def _specs(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[list[str], dict[str, Any]]]:
    """`option_spec` of each field `cls` declares itself, less `skip`."""
    kinds = option_types(cls)
    return [option_spec(f, kinds[f.name]) for f in option_fields(cls) if f.name not in skip]


class MethodName(click.ParamType):
    """A registered method name or alias, as registered now; another is one line with suggestions (exit 2)."""

    name = "method"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        method_entry(value)  # ConfigError, one line: "--method stll: unknown method 'stll' (did you mean 'stl'?) …"
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in [*METHODS.names(), *METHODS.aliases()] if n.startswith(incomplete)]


def method_choice() -> click.Option:
    """`--method`: one of the registered names or aliases."""
    return click.Option(["--method"], type=MethodName(), metavar="METHOD",
                        help=f"Transfer method: {', '.join(METHODS.names())} (`edgeft methods`) "
                             "[aft with a teacher, else stl].")


class CompressCommand(click.Command):
    """A command whose options are its own, `--method` and every method's options, grouped in --help."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        own = super().get_params(ctx)  # its options, then --help
        methods = [option for _, options in method_option_groups() for option in options]
        return [*own[:-1], method_choice(), *methods, own[-1]]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = super().get_params(ctx)
        with formatter.section("Options"):
            formatter.write_dl([p.get_help_record(ctx) for p in [*own[:-1], method_choice(), own[-1]]])
        for title, options in method_option_groups():
            with formatter.section(title):
                formatter.write_dl([o.get_help_record(ctx) for o in options])


def apply(options: list[Callable]) -> Callable:
    """A decorator applying a list of click option decorators in order."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def declared(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding the click options of the fields `cls` declares (less `skip`) to a command."""
    return apply([click.option(*decls, **settings) for decls, settings in _specs(cls, skip)])


def device(what: str) -> Callable:
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help=f"Where to {what} [auto].")


def seed(what: str) -> Callable:
    return click.option("--seed", type=int, help=f"Seed of {what} [0].")


def batch_size(default: int = 64) -> Callable:
    return click.option("--batch-size", type=int, help=f"Batch size [{default}].")


def _optional(kind: Any) -> bool:
    return type(None) in typing.get_args(kind)


def _as_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return {True: "on", False: "off", None: "none"}.get(value, str(value)) if isinstance(value, (bool, type(None))) \
        else str(value)


BATCH_PROFILE_HELP = ("Dynamic batch axis with this MIN,OPT,MAX profile (e.g. 1,8,32; also the TensorRT "
                      "optimisation profile; profiled at each point) [static batch 1].")
MAX_DROP_HELP = ("INT8 may lose at most POINTS of accuracy on the held-out images: other calibrators, then the "
                 "most sensitive layers kept in float; INT8 is refused if the bound cannot hold [int8 tolerance: 2].")
STRICT_HELP = ("Exit 4 when any format × precision is refused (default: exit 0 when each format has an "
               "engine that passed; refused ones are listed with their reason).")
FAIL_IF_HELP = ('CI gate: exit 3 when this holds for any engine, e.g. "top1_drop>1.0 or p99_ms>8" '
                '(metrics: top1_drop, accuracy, agreement, size_mb, p50_ms, p90_ms, p99_ms, fps, first_inference_ms, '
                'peak_mb).')


# DIGG's sampling flags: `generate` takes them as its own, `compress` as digg's method options
digg_sampling = declared(GenerationOptions, skip=("n_generated",))
few_data = apply([
    click.option("--classes", help="Comma-separated subset of the class folders to use."),
    click.option("--fraction", type=float, help="Stratified fraction of the training images to keep."),
    click.option("--shots", type=int, help="Images per class to keep (instead of --fraction)."),
])
