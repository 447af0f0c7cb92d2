"""The one training loop that every method uses.

A method describes a *stage* (the modules it trains, their parameter groups, a loss on a
batch, a data loader) and `run_stage` owns the rest: optimiser, schedule, AMP on CUDA,
gradient clipping, DDP, per-epoch checkpoints with RNG state (so `--resume` continues
exactly), metrics rows and progress — the last three through `edgeft.compress.resumable`'s
`Loop`, which `edgeft prime` shares.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgeft import artifacts
from edgeft.artifacts import RunDir
from edgeft.compress.resumable import Checkpoint, Dist, Loop, NullProgress, Progress, append_metrics
from edgeft.errors import ConfigError

__all__ = ["LossFn", "Optimisation", "Stage", "TrainSpec", "Trainer", "make_optimizer", "make_schedule",
           "resolve_device"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation recipe of one stage."""

    epochs: int
    lr: float
    optimizer: str = "sgd"  # sgd (Nesterov, momentum 0.9) | adamw | adam
    schedule: str = "cosine"  # cosine | multistep | constant
    weight_decay: float = 1e-5
    clip_grad: float | None = 5.0
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep decay points, fractions of training
    eval_every: int = 1


@dataclass
class Stage:
    """One training stage of a method."""

    name: str
    modules: dict[str, nn.Module]  # trained and checkpointed
    loss: LossFn  # (images, labels) -> (loss, logits or None)
    loader: DataLoader
    spec: TrainSpec
    param_groups: list[dict] | None = None  # default: all parameters of `modules` that need grad
    evaluate: Callable[[], float] | None = None  # validation accuracy, run on the main rank
    frozen_eval_modules: list[nn.Module] = field(default_factory=list)  # kept in eval() mode


@dataclass
class Optimisation:
    """A stage's optimiser, per-step LR schedule and mixed precision (autocast on CUDA, gradient scaler)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool
    amp_dtype: torch.dtype

    @classmethod
    def build(cls, stage: Stage, device: torch.device) -> "Optimisation":
        """The optimiser over the stage's parameter groups and its schedule over all of the stage's steps."""
        groups = stage.param_groups or [
            {"params": [p for m in stage.modules.values() for p in m.parameters() if p.requires_grad]}
        ]
        optimizer = make_optimizer(groups, stage.spec)
        total = max(1, stage.spec.epochs * len(stage.loader))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule(stage.spec, total))
        amp = device.type == "cuda"
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        return cls(optimizer, scheduler, scaler, amp, amp_dtype)

    def parts(self) -> dict[str, object]:
        """What a checkpoint keeps of it."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    def step(self, loss: torch.Tensor, clip_grad: float | None) -> None:
        """Backward (scaled), gradient clipping, optimiser and schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()


@dataclass
class Trainer:
    """Runs stages inside one run directory."""

    run: RunDir
    device: torch.device
    dist: Dist = field(default_factory=Dist)
    progress: Progress = field(default_factory=NullProgress)
    resume: bool = False

    def run_stage(self, stage: Stage) -> dict:
        """Trains `stage` to the end (or restores it if a finished copy exists); returns its last metrics."""
        folder = self.run.stage_dir(stage.name)
        if (folder / "done.json").exists():
            return self._restore_finished(stage, folder)
        for module in stage.modules.values():
            module.to(self.device)
        opt = Optimisation.build(stage, self.device)
        checkpoint = self._checkpoint(stage, folder / "last.pt", opt)
        loop = Loop(stage.name, stage.spec.epochs, checkpoint, self.progress, bar_per_unit=len(stage.loader),
                    dist=self.dist)
        wrapper = _ddp_wrap(stage, self.dist, self.device)
        metrics: dict = {}

        def epoch(index: int) -> None:
            metrics.clear()
            metrics.update(self._run_epoch(stage, wrapper, opt, index))

        loop.run(epoch)
        self._finish(stage, folder, metrics)
        return metrics

    def _checkpoint(self, stage: Stage, path: Path, opt: Optimisation) -> Checkpoint:
        """The stage's per-epoch checkpoint; restoring it drops metrics rows of the epochs after it."""

        def drop_later_rows(state: dict) -> None:
            rows = [r for r in artifacts.read_jsonl(self.run.metrics)
                    if not (r.get("stage") == stage.name and r.get("epoch", 0) > state["position"])]
            if self.dist.is_main:
                artifacts.write_jsonl(self.run.metrics, rows)

        parts = {**{f"module.{k}": m for k, m in stage.modules.items()}, **opt.parts()}
        return Checkpoint(path, parts, self.resume, self.run.root, on_restore=drop_later_rows)

    def _run_epoch(self, stage: Stage, wrapper: nn.Module, opt: Optimisation, epoch: int) -> dict:
        """Epoch `epoch` (from 0): training, validation when due, its metrics row (main rank)."""
        sampler = stage.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        began = time.time()
        metrics = self._train_epoch(stage, wrapper, opt)
        metrics.update(stage=stage.name, epoch=epoch + 1, seconds=round(time.time() - began, 3))
        is_last = epoch + 1 == stage.spec.epochs
        if stage.evaluate and (is_last or (epoch + 1) % stage.spec.eval_every == 0):
            if self.dist.is_main:
                metrics["val_acc"] = stage.evaluate()
            self.dist.barrier()
        if self.dist.is_main:
            append_metrics(self.run.metrics, metrics, "epoch")
        return metrics

    def _train_epoch(self, stage: Stage, wrapper: nn.Module, opt: Optimisation) -> dict:
        """One pass over the stage's loader; its loss, last LR, steps and (with logits) train accuracy."""
        for module in stage.modules.values():
            module.train()
        for module in stage.frozen_eval_modules:
            module.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in stage.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=opt.amp_dtype, enabled=opt.amp):
                loss, logits = wrapper(images, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage.name}: loss became {loss.item()}; lower --lr")
            opt.step(loss, stage.spec.clip_grad)
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            fields = {"loss": loss_sum / seen}
            if logits is not None:
                correct += (logits.argmax(1) == labels).sum().item()
                fields["acc"] = correct / seen
            self.progress.advance(1, **fields)
        out = {"loss": round(loss_sum / max(seen, 1), 5), "lr": opt.scheduler.get_last_lr()[0],
               "steps": len(stage.loader)}
        if seen and "acc" in fields:
            out["train_acc"] = round(correct / seen, 5)
        return out

    def _restore_finished(self, stage: Stage, folder: Path) -> dict:
        """A finished stage's weights and its last metrics (done.json)."""
        _load_modules(stage.modules, folder / "final.safetensors")
        log.info("stage %s already finished; restored its weights", stage.name)
        return artifacts.read_json(folder / "done.json")

    def _finish(self, stage: Stage, folder: Path, metrics: dict) -> None:
        """Writes the stage's final weights and done.json, then drops its checkpoint (main rank)."""
        if self.dist.is_main:
            _save_modules(stage.modules, folder / "final.safetensors")
            artifacts.write_json(folder / "done.json", metrics)
            (folder / "last.pt").unlink(missing_ok=True)
        self.dist.barrier()


def make_optimizer(groups: list[dict], spec: TrainSpec) -> torch.optim.Optimizer:
    """SGD-Nesterov, AdamW or Adam over the parameter groups (per-group lr/wd allowed)."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ConfigError(f"--optimizer {spec.optimizer}: choose sgd, adamw or adam")


def make_schedule(spec: TrainSpec, total_steps: int) -> Callable[[int], float]:
    """Per-step LR multiplier: cosine to 0, multistep ×0.1 at the milestones, or constant."""
    if spec.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if spec.schedule == "multistep":
        marks = [round(m * total_steps) for m in spec.milestones]
        return lambda step: 0.1 ** sum(step >= m for m in marks)
    if spec.schedule == "constant":
        return lambda step: 1.0
    raise ConfigError(f"--schedule {spec.schedule}: choose cosine, multistep or constant")


class _StageModule(nn.Module):
    """Holds a stage's trained modules so that DDP sees their parameters; forward = the loss."""

    def __init__(self, modules: dict[str, nn.Module], loss: LossFn) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.loss = loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        return self.loss(images, labels)


def _ddp_wrap(stage: Stage, dist: Dist, device: torch.device) -> nn.Module:
    module = _StageModule(stage.modules, stage.loss)
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def _save_modules(modules: dict[str, nn.Module], path) -> None:
    from safetensors.torch import save_file

    flat = {f"{k}.{n}": t.detach().contiguous().cpu() for k, m in modules.items() for n, t in m.state_dict().items()}
    artifacts.atomic_write(path, lambda tmp: save_file(flat, tmp))


def _load_modules(modules: dict[str, nn.Module], path) -> None:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    for key, module in modules.items():
        prefix = key + "."
        module.load_state_dict({n[len(prefix):]: t for n, t in flat.items() if n.startswith(prefix)})


def resolve_device(name: str) -> torch.device:
    """`auto` → this rank's CUDA device when there is one, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu":
        raise ConfigError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device("cpu")
