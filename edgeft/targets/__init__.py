"""Edge targets as data: one YAML file per device under devices/, read into frozen dataclasses.

Each figure carries the public source it comes from (or says how it was derived); `host`
is this machine, whose figures are measured when needed (`edgeft.targets.host`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeft.errors import ConfigError
from edgeft.registry import Registry

DEVICES_DIR = Path(__file__).resolve().parent / "devices"


@dataclass(frozen=True)
class Figure:
    """One number with its unit and where it comes from."""

    value: float
    unit: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "source": self.source}


@dataclass(frozen=True)
class Anchor:
    """A public latency measurement (batch 1, 224 px) used to calibrate the estimator."""

    model: str
    backend: str
    precision: str
    latency_ms: float
    source: str


@dataclass(frozen=True)
class Target:
    """An edge device: its runtimes in order of preference, precisions and peak figures."""

    name: str
    title: str
    kind: str
    aliases: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    peak: dict[str, Figure] = field(default_factory=dict)  # precision → TFLOPS/TOPS
    memory_bandwidth: Figure | None = None  # GB/s
    ram: Figure | None = None  # GB
    anchors: tuple[Anchor, ...] = ()
    calibrate_like: tuple[str, ...] = ()
    measured: bool = False
    notes: str = ""
    references: tuple[str, ...] = ()

    def peak_ops(self, precision: str) -> float:
        """Peak operations per second at `precision` (fp16 falls back to fp32 on CPUs without it)."""
        figure = self.peak.get(precision) or (self.peak.get("fp32") if precision == "fp16" else None)
        if figure is None:
            raise ConfigError(f"--precision {precision}: target {self.name} has no {precision} figure; "
                              f"it supports {', '.join(self.precisions)}")
        return figure.value * 1e12

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "kind": self.kind, "aliases": list(self.aliases),
            "backends": list(self.backends), "precisions": list(self.precisions),
            "peak": {k: v.to_json() for k, v in self.peak.items()},
            "memory_bandwidth": self.memory_bandwidth.to_json() if self.memory_bandwidth else None,
            "ram": self.ram.to_json() if self.ram else None,
            "anchors": [a.__dict__ for a in self.anchors], "calibrate_like": list(self.calibrate_like),
            "measured": self.measured, "notes": self.notes, "references": list(self.references),
        }


def _figure(data: dict | None, where: str) -> Figure | None:
    if data is None:
        return None
    try:
        return Figure(float(data["value"]), str(data["unit"]), str(data["source"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: a figure needs value, unit and source") from None


def target_from_yaml(path: Path) -> Target:
    """Reads one device file; malformed files fail naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Target(
            name=data["name"], title=data["title"], kind=data["kind"], aliases=tuple(data.get("aliases", ())),
            backends=tuple(data["backends"]), precisions=tuple(data["precisions"]),
            peak={k: _figure(v, f"{path}: peak.{k}") for k, v in data.get("peak", {}).items()},
            memory_bandwidth=_figure(data.get("memory_bandwidth"), f"{path}: memory_bandwidth"),
            ram=_figure(data.get("ram"), f"{path}: ram"),
            anchors=tuple(Anchor(**a) for a in data.get("anchors", ())),
            calibrate_like=tuple(data.get("calibrate_like", ())), measured=bool(data.get("measured", False)),
            notes=str(data.get("notes", "")).strip(), references=tuple(data.get("references", ())),
        )
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a valid target file ({exc})") from None


TARGETS: Registry[Target] = Registry("target")
for _path in sorted(DEVICES_DIR.glob("*.yaml")):
    _target = target_from_yaml(_path)
    TARGETS.add(_target.name, _target, aliases=_target.aliases)


def get_target(name: str) -> Target:
    """The target for a name or alias (`jetson` → jetson-orin-nano-8gb)."""
    return TARGETS.get(name)
