"""Resumable loops: the one owner of checkpoints, `--resume`, progress and metrics rows.

A `Loop` runs `total` units (a stage's epochs in `Trainer.run_stage`, optimiser steps in
`edgeft prime`) and owns what every resumable loop of the project shares: its `Checkpoint` (the
trained parts, every RNG state and the seconds spent so far, written atomically every `save_every`
units and after the last), restoring it under `--resume`, refusing an unfinished run without it, and
driving the `Progress` sink. What a unit does (batches, losses, evaluation) stays with its caller.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from edgeft import artifacts
from edgeft.errors import ConfigError

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the loop reports to (the CLI renders it as a rich progress bar)."""

    def start(self, stage: str, total: int) -> None: ...
    def advance(self, steps: int, **fields: float) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    """Progress sink for library use and non-main DDP ranks."""

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, steps: int, **fields: float) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Dist:
    """DDP placement of this process (world 1 when not under torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Dist":
        """Initialises the process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


@dataclass
class Checkpoint:
    """One resumable loop's checkpoint file: its parts' states, every RNG state and the seconds so far.

    `parts` are objects with `state_dict`/`load_state_dict` (modules, optimisers, schedulers, scalers);
    `meta` is saved alongside (e.g. an architecture); `on_restore` sees a found checkpoint's state before
    it is loaded, to refuse it or to tidy what it supersedes.
    """

    path: Path
    parts: dict[str, Any]
    resume: bool  # whether an unfinished run may be continued
    out: Path | str  # the --out that the refusal names
    meta: dict = field(default_factory=dict)
    on_restore: Callable[[dict], None] | None = None

    def save(self, position: int, seconds: float) -> None:
        """Writes the checkpoint after `position` units, atomically (a kill never leaves half a file)."""
        state = {"position": position, "seconds": seconds, "rng": _rng_state(), "meta": self.meta,
                 "parts": {key: part.state_dict() for key, part in self.parts.items()}}
        artifacts.atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def restore(self) -> tuple[int, float]:
        """Loads a found checkpoint into the parts and the RNGs; its (position, seconds), or (0, 0.0) if none."""
        if not self.path.exists():
            return 0, 0.0
        if not self.resume:
            raise ConfigError(
                f"--out {self.out}: holds an unfinished run; pass --resume to continue it or choose another --out"
            )
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if self.on_restore:
            self.on_restore(state)
        for key, part in self.parts.items():
            part.load_state_dict(state["parts"][key])
        _set_rng_state(state["rng"])
        return int(state["position"]), float(state["seconds"])


@dataclass
class Loop:
    """`total` units (epochs or steps) run by `run(unit)`: restored on resume, checkpointed, shown as progress."""

    label: str  # the progress bar's and the log's name
    total: int
    checkpoint: Checkpoint
    progress: Progress = field(default_factory=NullProgress)
    unit_name: str = "epoch"
    bar_per_unit: int = 1  # progress steps per unit (the unit advances them itself)
    save_every: int = 1
    dist: Dist = field(default_factory=Dist)
    began: float = field(default_factory=time.time, init=False)  # now minus the seconds of earlier sessions

    @property
    def seconds(self) -> float:
        """Seconds spent in this loop, every session of a resumed run included."""
        return time.time() - self.began

    def due(self, done: int, every: int) -> bool:
        """Whether something done every `every` units is due after `done` units (always after the last)."""
        return done % every == 0 or done == self.total

    def run(self, unit: Callable[[int], None]) -> int:
        """Calls `unit(position)` for each position left after the checkpoint, checkpointing on the main rank
        every `save_every` units and after the last; the progress bar is closed also on Ctrl-C. Returns the
        position it resumed from."""
        start, seconds = self.checkpoint.restore()
        self.began = time.time() - seconds
        if start:
            log.info("%s resumes after %s %d of %d", self.label, self.unit_name, start, self.total)
        self.progress.start(self.label, max(1, self.total * self.bar_per_unit))
        self.progress.advance(start * self.bar_per_unit)
        try:
            for position in range(start, self.total):
                unit(position)
                if self.due(position + 1, self.save_every):
                    if self.dist.is_main:
                        self.checkpoint.save(position + 1, self.seconds)
                    self.dist.barrier()
        finally:
            self.progress.finish()
        return start


def append_metrics(path: Path, row: dict, key: str) -> None:
    """Appends a metrics row, dropping the rows of the same stage from its `key` position on (left by a run
    killed after them and before its checkpoint)."""
    rows = [r for r in artifacts.read_jsonl(path)
            if not (r.get("stage") == row.get("stage") and r.get(key, 0) >= row[key])]
    artifacts.write_jsonl(path, rows + [row])


def _rng_state() -> dict:
    """Every RNG a loop draws from, as tensors (loadable with weights_only=True)."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_gauss is None else py_gauss, dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restores what `_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    py_gauss = state["python_gauss"].item()
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None if math.isnan(py_gauss) else py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
