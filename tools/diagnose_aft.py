"""Does AFT's regulariser move the student towards the teacher? The kernel distance of finished runs.

    python tools/diagnose_aft.py [--task cifar10-animals] [--seed 0]

For the imagenet-teacher protocol's runs of one task and seed (tools/transfer_imagenet.py), it
measures AFT's objective term, the linear-kernel distance between the student's pooled features
and the teacher's cached features of the training images (eval transform, batches of 64 as in
training, fixed draws), for the pre-trained student before any fine-tuning and for each finished
row (stl, aft β=0, aft, aft identity-μ): with μ = 1 and with the `aft` row's learned μ. It also
shows how the learned μ spreads. If `aft` ends far closer to the teacher than `aft β=0` yet no
more accurate, the regulariser works as designed and the teacher's kernel does not carry what the
task needs at these resolutions; if both end as far, β or μ swallowed the term.
Writes results/aft-diagnosis.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, dump_json, provenance  # noqa: E402
from transfer_imagenet import PRETRAIN_EPOCHS, TASKS, run_dir  # noqa: E402
from transfer_imagenet import ROWS as PROTOCOL_ROWS  # noqa: E402

from edgeft import artifacts  # noqa: E402
from edgeft.compress.data import ImageDataset, ImageStore, Sample, build_transform, make_loader  # noqa: E402
from edgeft.compress.losses import kernel_distance  # noqa: E402
from edgeft.compress.models import Normalized  # noqa: E402
from edgeft.export.base import load_student  # noqa: E402

ROWS = ("stl", "aft β=0", "aft", "aft identity-μ")
BATCH, DRAWS = 64, 200


def student_features(run: Path, images: ImageDataset) -> torch.Tensor:
    """The run's student's pooled features of `images` (its own normalisation)."""
    card, model = load_student(artifacts.RunDir(run))
    net = Normalized(model, tuple(card.mean), tuple(card.std)).eval()
    with torch.no_grad():
        return torch.cat([net.features(x) for x, _ in make_loader(images, 256)])


def mean_distance(phi: torch.Tensor, psi: torch.Tensor, mu: torch.Tensor) -> float:
    """AFT's kernel distance averaged over DRAWS fixed random batches of BATCH training images."""
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randperm(len(phi), generator=gen)[:BATCH] for _ in range(DRAWS)]
    return statistics.mean(kernel_distance(phi[rows], psi[rows], mu).item() for rows in draws)


def teacher_features(aft_run: Path, count: int) -> torch.Tensor:
    """The teacher's cached features of the train images (the cache entry with one row per train image)."""
    for path in (aft_run / "cache").glob("*.safetensors"):
        features = load_file(str(path)).get("features")
        if features is not None and len(features) == count:
            return features
    raise SystemExit(f"{aft_run}/cache: no cached teacher features of the {count} train images; run the aft row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cifar10-animals", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task, rows = TASKS[args.task], {r.name: r for r in PROTOCOL_ROWS}
    runs = {name: run_dir(task, rows[name], args.seed) for name in ROWS}
    split = artifacts.read_json(runs["aft"] / "data_split.json")
    store = ImageStore(split["source"])
    classes = split["classes"]
    samples = [Sample(p, classes.index(p.split("/")[-2])) for p in split["train"]]
    images = ImageDataset(store, samples, task.image_size, build_transform(task.image_size, train=False))
    psi = teacher_features(runs["aft"], len(images))
    s = load_file(str(runs["aft"] / "checkpoints" / "aft" / "final.safetensors"))["weights.s"]
    learned, ones = torch.sigmoid(s), torch.ones_like(s)
    pretrained = CACHE / "student-pretrain" / f"resnet18-{task.image_size}px-{PRETRAIN_EPOCHS}ep"
    models = {"pre-trained student (before fine-tuning)": pretrained, **runs}
    table = []
    for name, run in models.items():
        phi = student_features(run, images)
        summary = artifacts.read_json(run / "summary.json")
        table.append({"model": name, "accuracy": summary["student"]["accuracy"] if name in runs else None,
                      "distance_mu_1": mean_distance(phi, psi, ones),
                      "distance_learned_mu": mean_distance(phi, psi, learned)})
        print(table[-1])
    mu = {"features": len(learned), "mean": learned.mean().item(), "below_0.1": (learned < 0.1).float().mean().item(),
          "above_0.9": (learned > 0.9).float().mean().item(),
          "effective_share": (learned.sum() ** 2 / (len(learned) * (learned ** 2).sum())).item()}
    result = {"task": task.name, "seed": args.seed, "batch": BATCH, "draws": DRAWS, "rows": table,
              "learned_mu": mu, "provenance": provenance(args.seed)}
    dump_json(RESULTS / "aft-diagnosis.json", result)
    artifacts.write_text(RESULTS / "aft-diagnosis.md", markdown(result))
    print(RESULTS / "aft-diagnosis.md")


def markdown(result: dict) -> str:
    prov = result["provenance"]
    lines = ["# AFT diagnosis: the kernel distance to the teacher, before and after training", "",
             f"Task {result['task']}, seed {result['seed']}; AFT's linear-kernel distance on the training images "
             f"(eval transform), mean over {result['draws']} fixed batches of {result['batch']}.", "",
             "| model | top-1 % | distance, μ = 1 | distance, aft's learned μ |", "|---|---|---|---|"]
    for row in result["rows"]:
        acc = "" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}"
        lines.append(f"| {row['model']} | {acc} | {row['distance_mu_1']:.4f} | {row['distance_learned_mu']:.4f} |")
    mu = result["learned_mu"]
    lines += ["", f"Learned μ = sigmoid(s) of the aft row: mean {mu['mean']:.3f}, {100 * mu['below_0.1']:.1f}% of "
              f"the {mu['features']} teacher features below 0.1, {100 * mu['above_0.9']:.1f}% above 0.9, effective share "
              f"(Σμ)²/(d·Σμ²) {mu['effective_share']:.3f}.", "",
              f"Command `{prov['command']}`; hardware {prov['hardware']}; versions {prov['versions']}; "
              f"commit {prov['commit']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
