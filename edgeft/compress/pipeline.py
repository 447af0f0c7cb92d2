"""`edgeft compress`: resolve models and data, run one method, write the student and summary.json."""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

from edgeft import artifacts
from edgeft.artifacts import RunDir, StudentCard
from edgeft.compress import data as data_mod
from edgeft.compress import models
from edgeft.compress.kernels import check_mode as check_kernels
from edgeft.compress.methods import METHODS
from edgeft.compress.methods.base import TransferContext
from edgeft.compress.methods.common import (adapted_teacher, evaluate, finetune, mean_per_class_accuracy, predictions,
                                           top1)
from edgeft.compress.resumable import Dist, NullProgress, Progress
from edgeft.compress.train import Trainer, resolve_device
from edgeft.config import RESUME_FREE, CompressConfig, build_config
from edgeft.errors import ConfigError, DataError, Interrupted

log = logging.getLogger(__name__)


def prepare_run(cfg: CompressConfig, explicit: dict) -> tuple[CompressConfig, RunDir]:
    """Picks the run directory and, for --resume, the saved config (explicit flags must agree)."""
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method}"
    run = RunDir(out)
    if cfg.resume:
        if not run.config.exists():
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml); drop --resume")
        saved = build_config(CompressConfig, str(run.config))
        for key, value in explicit.items():
            if key in RESUME_FREE:
                continue
            if _norm(value) != _norm(saved.value(key)):
                raise ConfigError(
                    f"--resume: --{key.replace('_', '-')} {value} differs from the saved run "
                    f"({saved.value(key)}); resume with the same options or choose another --out"
                )
        cfg = dataclasses.replace(saved, resume=True, out=str(out), device=cfg.device, workers=cfg.workers)
    elif run.summary.exists() or run.checkpoints.exists():
        raise ConfigError(f"--out {out}: already holds a run; pass --resume to continue it or choose another --out")
    return cfg, run


def run_compress(
    cfg: CompressConfig,
    explicit: dict | None = None,
    progress: Callable[[], Progress] = NullProgress,
) -> dict:
    """Runs one compression end to end and returns summary.json's content.

    Ctrl-C raises `Interrupted` (exit 130) naming the `--resume` command that continues the run;
    the summary's seconds add up every session of a resumed run, a killed one's up to its last saved work.
    """
    began = time.time()
    cfg, run = prepare_run(cfg, explicit or {})
    previous = _previous_seconds(run) if cfg.resume else 0.0
    try:
        return _compress(cfg, run, progress, lambda: previous + time.time() - began)
    except KeyboardInterrupt:
        raise _interrupted(run, previous + time.time() - began) from None


def _compress(cfg: CompressConfig, run: RunDir, progress: Callable[[], Progress],
              seconds: Callable[[], float]) -> dict:
    """Fits the method in `run`, then writes the student and summary.json (main rank); returns the summary."""
    check_kernels(cfg.kernels)
    device = resolve_device(cfg.device)
    dist = Dist.from_env(device)
    torch.manual_seed(cfg.seed)
    method = METHODS.get(cfg.method).load()()
    ctx = _context(cfg, run, device, dist, progress)
    if dist.is_main:
        _mark_session(run, seconds())
    student = method.fit(ctx)
    if ctx.teacher_specs and "teacher_accuracy" not in ctx.notes:
        adapted_teacher(ctx)
    summary = _summarise(ctx, student, ctx.images, ctx.val, seconds())
    if cfg.baseline and ctx.teacher_specs and cfg.method != "stl":
        summary["baseline"] = _fine_tune_alone(ctx)
        summary["gain_over_baseline"] = round(summary["student"]["accuracy"] - summary["baseline"]["accuracy"], 5)
        summary["seconds"] = round(seconds(), 1)
    if dist.is_main:
        _write_student(run, ctx, student)
        artifacts.write_json(run.summary, summary)
        run.elapsed.unlink(missing_ok=True)  # the summary holds the total now
    dist.barrier()
    return summary


def _context(cfg: CompressConfig, run: RunDir, device: torch.device, dist: Dist,
             progress: Callable[[], Progress]) -> TransferContext:
    """Loads the teachers, the data and a fresh student, saves config.yaml and data_split.json (main rank)."""
    teacher_specs = _teacher_specs(cfg)
    # Teachers are loaded first so that an offline hub or a bad file fails before any data work.
    teachers = [models.create(spec, num_classes=0, role="teacher").to(device).eval().requires_grad_(False)
                for spec in teacher_specs]
    splits = data_mod.sample_few(
        data_mod.open_image_folder(cfg.data, cfg.val_fraction, cfg.classes), cfg.fraction, cfg.shots, cfg.seed
    )
    _check_resume_classes(run, splits.classes)
    if dist.is_main:
        artifacts.write_yaml(run.config, cfg.to_dict())
    image_size = student_image_size(cfg, teacher_specs, splits)
    images, val = _datasets(splits, image_size)
    if dist.is_main:  # after decoding: the split lists exactly the images used, and those skipped
        artifacts.write_json(run.data_split, splits.describe(images, val))
    student_spec = models.resolve(cfg.student, _student_weights(cfg), role="student")
    torch.manual_seed(cfg.seed)
    student = models.create(student_spec, num_classes=len(splits.classes), role="student",
                            zero_head=cfg.head_init == "zero").to(device)
    trainer = Trainer(run, device, dist, progress() if dist.is_main else NullProgress(), cfg.resume)
    return TransferContext(cfg, run, device, trainer, splits.classes, images, val, image_size,
                           teacher_specs, student, student_spec, teachers)


def _datasets(splits: data_mod.DataSplits, image_size: int) -> tuple[data_mod.ImageDataset, data_mod.ImageDataset]:
    """The training images (no transform: the method adds its own) and the validation images (eval transform)."""
    images = data_mod.ImageDataset(splits.store, splits.train, image_size, what="training images")
    val = data_mod.ImageDataset(
        splits.store, splits.val, image_size, data_mod.build_transform(image_size, train=False),
        what="validation images",
    )
    return images, val


def _mark_session(run: RunDir, seconds: float) -> None:
    """Notes when this session began and the seconds before it, so that a run killed without Ctrl-C
    (SIGKILL, a lost machine) still counts this session's time up to its last saved work when resumed."""
    artifacts.write_json(run.elapsed, {"seconds": round(seconds, 1), "since": time.time()})


def _previous_seconds(run: RunDir) -> float:
    """Seconds of the run's earlier sessions: the interrupted ones' tally (plus, for a killed session, its time
    until the last checkpoint or cache file it wrote: work after that is redone), else the finished run's summary."""
    if run.elapsed.exists():
        tally = artifacts.read_json(run.elapsed)
        since = tally.get("since")
        return float(tally["seconds"]) + (max(0.0, _last_saved(run) - since) if since is not None else 0.0)
    if run.summary.exists():
        return float(artifacts.read_json(run.summary).get("seconds", 0.0))
    return 0.0


def _last_saved(run: RunDir) -> float:
    """When the run last saved work: the newest modification time under its checkpoints and cache (0 if none)."""
    files = [p for folder in (run.checkpoints, run.cache) if folder.exists() for p in folder.rglob("*")
             if p.is_file() and p != run.elapsed]
    return max((p.stat().st_mtime for p in files), default=0.0)


def _interrupted(run: RunDir, seconds: float) -> Interrupted:
    """The Ctrl-C message: how to continue the run (its seconds so far are kept for the summary)."""
    if not run.config.exists():
        return Interrupted(f"interrupted before {run.root} held anything to resume; run the command again")
    artifacts.write_json(run.elapsed, {"seconds": round(seconds, 1)})
    return Interrupted(f"interrupted: {run.root} keeps every finished epoch; continue it with "
                       f"`edgeft compress --out {run.root} --resume`")


def _teacher_specs(cfg: CompressConfig) -> list[models.ModelSpec]:
    if cfg.teacher_from:  # a finished run's model replaces --teacher
        return [models.teacher_spec_from_run(cfg.teacher_from)]
    weights = list(cfg.teacher_weights)
    if weights and len(weights) != len(cfg.teacher):
        raise ConfigError(
            f"--teacher-weights: got {len(weights)} file(s) for {len(cfg.teacher)} --teacher; give one per teacher"
        )
    specs = [models.resolve(name, weights[i] if weights else None, role="teacher") for i, name in enumerate(cfg.teacher)]
    if cfg.teacher_image_size:
        specs = [dataclasses.replace(spec, input_size=cfg.teacher_image_size) for spec in specs]
    return specs


def student_image_size(cfg: CompressConfig, teacher_specs: list[models.ModelSpec], splits: data_mod.DataSplits) -> int:
    """--image-size, else the data's own resolution (median short side) capped at the first teacher's
    input size (224 without a teacher): never upsample the student past what the images hold."""
    if cfg.image_size:
        return cfg.image_size
    cap = teacher_specs[0].input_size if teacher_specs else 224
    native = data_mod.typical_short_side(splits)
    return min(cap, native) if native else cap


def _student_weights(cfg: CompressConfig) -> str:
    """`auto`: ImageNet weights where this machine has them (hub, its cache, an installed package), else
    random init with a warning; none with the demo teacher (the demo is the same offline and online)."""
    choice = cfg.student_weights
    if choice != "auto":
        return {"imagenet": "hub"}.get(choice, choice)
    if cfg.teacher == ("demo",) or not cfg.teacher:
        return "none"
    source = models.available_weights(cfg.student)
    if source is None:
        log.warning("--student-weights auto: no ImageNet weights for %s on this machine (hub unreachable); the "
                    "student starts from random weights (pass --student-weights PATH for pretrained ones)", cfg.student)
    return source or "none"


def _check_resume_classes(run: RunDir, classes: list[str]) -> None:
    if run.data_split.exists():
        saved = artifacts.read_json(run.data_split).get("classes")
        if saved != classes:
            raise DataError(
                f"{run.data_split}: the checkpoint was trained on classes {saved}, the data has {classes}; "
                "use the same --data/--classes or another --out"
            )


def _fine_tune_alone(ctx: TransferContext) -> dict:
    """The same student (same seed, init, data and flags) fine-tuned without the teacher (stl):
    what the method's accuracy is measured against. Its stages are named `baseline-…`."""
    began = time.time()
    torch.manual_seed(ctx.config.seed)
    fresh = models.create(ctx.student_spec, num_classes=len(ctx.classes), role="student",
                          zero_head=ctx.config.head_init == "zero").to(ctx.device)
    alone = finetune(dataclasses.replace(ctx, student=fresh, notes={}), stage="baseline-finetune")
    return {"method": "stl", "accuracy": evaluate(alone, ctx.val, ctx.device), "seconds": round(time.time() - began, 1)}


def _summarise(ctx: TransferContext, student, images, val, seconds: float) -> dict:
    cfg = ctx.config
    predicted, labels = predictions(student, val, ctx.device)
    teacher = None
    if ctx.teacher_specs:
        teacher = {
            "name": "+".join(s.display_name for s in ctx.teacher_specs),
            "params": sum(models.count_params(t) for t in ctx.teachers()),
            "accuracy": ctx.notes.get("teacher_accuracy"),
            "evaluated_as": ctx.notes.get("teacher_evaluated_as"),
        }
    return {
        "method": cfg.method,
        "teacher": teacher,
        "student": {
            "name": ctx.student_spec.display_name,
            "params": models.count_params(student),
            "macs": models.count_macs(student, ctx.image_size),
            "accuracy": top1(predicted, labels),
            "mean_per_class_accuracy": mean_per_class_accuracy(predicted, labels),
        },
        "data": {"train_images": len(images), "val_images": len(val), "classes": len(ctx.classes)},
        "seconds": round(seconds, 1),
    }


def _write_student(run: RunDir, ctx: TransferContext, student) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in student.model.state_dict().items()}
    artifacts.atomic_write(run.student_weights, lambda tmp: save_file(state, tmp))
    card = StudentCard(
        arch=ctx.student_spec.arch,
        num_classes=len(ctx.classes),
        class_names=ctx.classes,
        input_size=(3, ctx.image_size, ctx.image_size),
        mean=ctx.student_spec.mean,
        std=ctx.student_spec.std,
        teacher="+".join(ctx.config.teacher),
        method=ctx.config.method,
    )
    artifacts.write_json(run.student_card, card.to_json())


def _norm(value):
    return list(value) if isinstance(value, tuple) else value
