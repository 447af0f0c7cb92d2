"""Does AFT's regulariser move the student towards the teacher? The kernel distance of finished runs.

    python tools/diagnose_aft.py [--task cifar10-animals] [--seed 0]

For the imagenet-teacher protocol's runs of one task and seed (tools/transfer_imagenet.py), it
measures AFT's objective term, the linear-kernel distance between the student's pooled features
and the teacher's cached features, on the training images and on the held-out test images (eval
transform, batches of 64 as in training, fixed draws), for the pre-trained student before any
fine-tuning and for each finished row of the task (stl, aft β=0, aft, aft identity-μ): with μ = 1
and with the `aft` row's learned μ. It also shows how the learned μ spreads. If `aft` ends far
closer to the teacher than `aft β=0` yet no more accurate, the regulariser works as designed and
the teacher's kernel does not carry what the task needs at these resolutions; if the distance
falls on the training images only, the student learnt the teacher's kernel of its few images
without it carrying over to new ones; if both rows end as far, β or μ swallowed the term. The
same distance to the labels' one-hot kernel says whose similarities follow the classes: the
teacher's, or the students'. A linear probe on each model's frozen features (same probe for all)
says whether the features became more linearly separable even where the fine-tuned top-1 did not move. Writes results/aft-diagnosis-<task>.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
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
from edgeft.export.quantize import label_of  # noqa: E402

ROWS = ("stl", "aft β=0", "aft", "aft identity-μ")
BATCH, DRAWS = 64, 200
STEM = "aft-diagnosis"


def student_features(run: Path, images: ImageDataset) -> torch.Tensor:
    """The run's student's pooled features of `images` (its own normalisation)."""
    card, model = load_student(artifacts.RunDir(run))
    net = Normalized(model, tuple(card.mean), tuple(card.std)).eval()
    with torch.no_grad():
        return torch.cat([net.features(x) for x, _ in make_loader(images, 256)])


def mean_distance(phi: torch.Tensor, psi: torch.Tensor, mu: torch.Tensor) -> float:
    """AFT's kernel distance averaged over DRAWS fixed random batches of BATCH images."""
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randperm(len(phi), generator=gen)[:BATCH] for _ in range(DRAWS)]
    return statistics.mean(kernel_distance(phi[rows], psi[rows], mu).item() for rows in draws)


def probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                   l2: float = 1e-3) -> float:
    """Held-out top-1 of a linear probe on frozen features: multinomial logistic regression on standardised
    features with an L2 penalty `l2`, full-batch L-BFGS (one fixed probe, the same for every model)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    x, v = (train - mean) / std, (val - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], int(train_labels.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), train_labels) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (head(v).argmax(1) == val_labels).float().mean().item()


def teacher_features(aft_run: Path, count: int) -> torch.Tensor:
    """The teacher's cached features of a split (the aft run's cache entry with one row per image of it)."""
    for path in (aft_run / "cache").glob("*.safetensors"):
        features = load_file(str(path)).get("features")
        if features is not None and len(features) == count:
            return features
    raise SystemExit(f"{aft_run}/cache: no cached teacher features of {count} images; run the aft row")


def split_images(split: dict, part: str, image_size: int) -> ImageDataset:
    """The run's `part` images (train or val) in the run's order, eval transform."""
    classes = split["classes"]
    samples = [Sample(p, label_of(p, classes)) for p in split[part]]
    return ImageDataset(ImageStore(split["source"]), samples, image_size, build_transform(image_size, train=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cifar10-animals", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task, rows = TASKS[args.task], {r.name: r for r in PROTOCOL_ROWS}
    runs = {name: run_dir(task, rows[name], args.seed) for name in ROWS if task.name in rows[name].tasks}
    runs = {name: run for name, run in runs.items() if (run / "summary.json").exists()}
    if "aft" not in runs:
        raise SystemExit(f"{task.name} seed {args.seed}: the aft row has not finished; run it first")
    split = artifacts.read_json(runs["aft"] / "data_split.json")
    images = {part: split_images(split, part, task.image_size) for part in ("train", "val")}
    psi = {part: teacher_features(runs["aft"], len(data)) for part, data in images.items()}
    s = load_file(str(runs["aft"] / "checkpoints" / "aft" / "final.safetensors"))["weights.s"]
    learned, ones = torch.sigmoid(s), torch.ones_like(s)
    pretrained = CACHE / "student-pretrain" / f"resnet18-{task.image_size}px-{PRETRAIN_EPOCHS}ep"
    models = {"pre-trained student (before fine-tuning)": pretrained, **runs}
    labels = F.one_hot(images["val"].labels).float()
    no_weights = torch.ones(labels.shape[1])
    probe = {part: data.labels for part, data in images.items()}
    table = [{"model": "teacher (its cached features)", "accuracy": None,
              "val_to_labels": mean_distance(psi["val"], labels, no_weights),
              "probe": probe_accuracy(psi["train"], probe["train"], psi["val"], probe["val"])},
             {"model": "teacher × aft's learned μ", "accuracy": None,
              "val_to_labels": mean_distance(psi["val"] * learned, labels, no_weights)}]
    for name, run in models.items():
        row = {"model": name, "accuracy": None}
        if name in runs:
            row["accuracy"] = artifacts.read_json(run / "summary.json")["student"]["accuracy"]
        phi = {part: student_features(run, data) for part, data in images.items()}
        for part in images:
            row[f"{part}_mu_1"] = mean_distance(phi[part], psi[part], ones)
            row[f"{part}_learned_mu"] = mean_distance(phi[part], psi[part], learned)
        row["val_to_labels"] = mean_distance(phi["val"], labels, no_weights)
        row["probe"] = probe_accuracy(phi["train"], probe["train"], phi["val"], probe["val"])
        table.append(row)
        print(row)
    mu = {"features": len(learned), "mean": learned.mean().item(), "below_0.1": (learned < 0.1).float().mean().item(),
          "above_0.9": (learned > 0.9).float().mean().item(),
          "effective_share": (learned.sum() ** 2 / (len(learned) * (learned ** 2).sum())).item()}
    result = {"task": task.name, "seed": args.seed, "batch": BATCH, "draws": DRAWS, "rows": table,
              "learned_mu": mu, "provenance": provenance(args.seed)}
    dump_json(RESULTS / f"{STEM}-{task.name}.json", result)
    artifacts.write_text(RESULTS / f"{STEM}-{task.name}.md", markdown(result))
    print(RESULTS / f"{STEM}-{task.name}.md")


def distance_table(result: dict) -> list[str]:
    """The Markdown table of the measured distances (also shown in results/transfer-imagenet.md)."""
    lines = ["| model | top-1 % | train, μ = 1 | train, aft's μ | held-out, μ = 1 | held-out, aft's μ | "
             "held-out, to the labels' kernel | frozen-feature probe % |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cells = ["" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}"]
        cells += [f"{row[k]:.4f}" if k in row else "" for k in ("train_mu_1", "train_learned_mu", "val_mu_1",
                                                                "val_learned_mu", "val_to_labels")]
        cells.append(f"{100 * row['probe']:.2f}" if "probe" in row else "")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    prov = result["provenance"]
    lines = ["# AFT diagnosis: the kernel distance to the teacher, before and after training", "",
             f"Task {result['task']}, seed {result['seed']}; AFT's linear-kernel distance between the student's and the "
             "teacher's features, on the training images (those AFT regularises on) and on the held-out test "
             f"images (eval transform), mean over {result['draws']} fixed batches of {result['batch']}. The last column is the "
             "same distance from the features' kernel to the labels' (one-hot) kernel: how closely the features' "
             "similarities follow the classes; the last, a linear probe (logistic regression, L2 1e-3, L-BFGS) on "
             "each model's frozen features of the training images, scored on the held-out ones.", "",
             *distance_table(result)]
    mu = result["learned_mu"]
    lines += ["", f"Learned μ = sigmoid(s) of the aft row: mean {mu['mean']:.3f}, {100 * mu['below_0.1']:.1f}% of "
              f"the {mu['features']} teacher features below 0.1, {100 * mu['above_0.9']:.1f}% above 0.9, effective share "
              f"(Σμ)²/(d·Σμ²) {mu['effective_share']:.3f}.", "",
              f"Command `{prov['command']}`; hardware {prov['hardware']}; versions {prov['versions']}; "
              f"commit {prov['commit']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
