"""The one training loop that every method uses.

A method describes a *stage* (the modules it trains, their parameter groups, a loss on a
batch, a data loader) and `run_stage` owns the rest: optimiser, schedule, AMP on CUDA,
gradient clipping, DDP, per-epoch checkpoints with RNG state (so `--resume` continues
exactly), metrics rows and progress.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgeft import artifacts
from edgeft.artifacts import RunDir
from edgeft.errors import ConfigError

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
        done_file = folder / "done.json"
        if done_file.exists():
            _load_modules(stage.modules, folder / "final.safetensors")
            log.info("stage %s already finished; restored its weights", stage.name)
            return artifacts.read_json(done_file)
        for module in stage.modules.values():
            module.to(self.device)
        groups = stage.param_groups or [
            {"params": [p for m in stage.modules.values() for p in m.parameters() if p.requires_grad]}
        ]
        optimizer = make_optimizer(groups, stage.spec)
        steps_per_epoch = len(stage.loader)
        total = max(1, stage.spec.epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule(stage.spec, total))
        amp = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        start_epoch = 0
        last = folder / "last.pt"
        if last.exists():
            if not self.resume:
                raise ConfigError(
                    f"--out {self.run.root}: holds an unfinished run; pass --resume to continue it or choose another --out"
                )
            start_epoch = self._restore(last, stage, optimizer, scheduler, scaler)
            log.info("stage %s resumes after epoch %d", stage.name, start_epoch)
        wrapper = _ddp_wrap(stage, self.dist, self.device)
        sampler = stage.loader.sampler
        self.progress.start(stage.name, total)
        self.progress.advance(start_epoch * steps_per_epoch)
        metrics: dict = {}
        try:  # the bar is closed also on Ctrl-C, so that the interruption's message reads cleanly
            for epoch in range(start_epoch, stage.spec.epochs):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                began = time.time()
                metrics = self._train_epoch(stage, wrapper, optimizer, scheduler, scaler, amp, amp_dtype)
                metrics.update(stage=stage.name, epoch=epoch + 1, seconds=round(time.time() - began, 3))
                is_last = epoch + 1 == stage.spec.epochs
                if stage.evaluate and (is_last or (epoch + 1) % stage.spec.eval_every == 0):
                    if self.dist.is_main:
                        metrics["val_acc"] = stage.evaluate()
                    self.dist.barrier()
                if self.dist.is_main:
                    self._append_metrics(metrics)
                    self._save(last, epoch + 1, stage, optimizer, scheduler, scaler)
                self.dist.barrier()
        finally:
            self.progress.finish()
        if self.dist.is_main:
            _save_modules(stage.modules, folder / "final.safetensors")
            artifacts.write_json(done_file, metrics)
            last.unlink(missing_ok=True)
        self.dist.barrier()
        return metrics

    def _train_epoch(self, stage, wrapper, optimizer, scheduler, scaler, amp, amp_dtype) -> dict:
        for module in stage.modules.values():
            module.train()
        for module in stage.frozen_eval_modules:
            module.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in stage.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp):
                loss, logits = wrapper(images, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage.name}: loss became {loss.item()}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if stage.spec.clip_grad:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, stage.spec.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            fields = {"loss": loss_sum / seen}
            if logits is not None:
                correct += (logits.argmax(1) == labels).sum().item()
                fields["acc"] = correct / seen
            self.progress.advance(1, **fields)
        out = {"loss": round(loss_sum / max(seen, 1), 5), "lr": scheduler.get_last_lr()[0], "steps": len(stage.loader)}
        if seen and "acc" in fields:
            out["train_acc"] = round(correct / seen, 5)
        return out

    def _append_metrics(self, row: dict) -> None:
        rows = [r for r in artifacts.read_jsonl(self.run.metrics)
                if not (r.get("stage") == row["stage"] and r.get("epoch", 0) >= row["epoch"])]
        artifacts.write_jsonl(self.run.metrics, rows + [row])

    def _save(self, path, epoch, stage, optimizer, scheduler, scaler) -> None:
        state = {
            "epoch": epoch,
            "modules": {k: m.state_dict() for k, m in stage.modules.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
        }
        artifacts.atomic_write(path, lambda tmp: torch.save(state, tmp))

    def _restore(self, path, stage, optimizer, scheduler, scaler) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, module in stage.modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        rows = [r for r in artifacts.read_jsonl(self.run.metrics)
                if not (r.get("stage") == stage.name and r.get("epoch", 0) > state["epoch"])]
        if self.dist.is_main:
            artifacts.write_jsonl(self.run.metrics, rows)
        return int(state["epoch"])


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


def _rng_state() -> dict:
    """Every RNG the loop draws from, as tensors (loadable with weights_only=True)."""
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
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    py_gauss = state["python_gauss"].item()
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None if math.isnan(py_gauss) else py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
