"""DIGG: masks, `edgeft generate` (ImageFolder + manifest, seeds, shards, resume), the transformer in the pack,
and the methods digg, ota, digg-irf with their --kd-data variants; kdep with --unlabeled digg:PACK."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file
from torchvision.datasets import ImageFolder

from edgeft.cli import cli
from edgeft.compress.generative.digg import random_mask, read_manifest
from edgeft.compress.generative.pack import load_pack
from tests.conftest import TINY_TRANSFORMER, tiny_args


def invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(args: list[str]):
    result = invoke(args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def one_line_error(args: list[str], needle: str) -> str:
    result = invoke(args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    return lines[0]


def generate(pack: Path, data: Path, out: Path, *extra) -> None:
    ok(["generate", "--pack", pack, "--data", data, "--out", out, "--n", "10", "--batch-size", "4", "--device", "cpu",
        *extra])


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.mark.parametrize("shape", ["box", "block"])
def test_masks_cover_about_the_ratio(shape):
    rng = np.random.default_rng(0)
    for ratio in (0.05, 0.25, 0.5, 0.9):
        mask = random_mask(rng, 8, 8, shape, ratio)
        assert mask.sum() >= 1 and abs(mask.mean() - ratio) <= (0.13 if shape == "box" else 0.07)
    box = random_mask(rng, 8, 8, "box", 0.5)
    rows, cols = np.nonzero(box)
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle


def test_adding_a_transformer_keeps_the_vqgan_and_both_packs_load(tiny_pack, tiny_digg_pack):
    assert load_pack(str(tiny_pack)).transformer is None  # a VQGAN-only pack loads as before
    meta, old = (json.loads((p / "pack.json").read_text()) for p in (tiny_digg_pack, tiny_pack))
    assert meta["sha256"] == old["sha256"]  # the VQGAN was not trained again
    assert load_file(str(tiny_digg_pack / "vqgan.safetensors")).keys() == load_file(str(tiny_pack / "vqgan.safetensors")).keys()
    entry = meta["transformer"]
    assert entry["training"]["steps"] == TINY_TRANSFORMER["transformer_steps"] and entry["heldout"]["nll"] > 0
    assert entry["architecture"]["block_size"] == 16 and entry["architecture"]["vocab_size"] == 16
    pack = load_pack(str(tiny_digg_pack))
    assert pack.transformer is not None and not any(p.requires_grad for p in pack.transformer.parameters())
    assert "latent transformer" in (tiny_digg_pack / "card.md").read_text()
    rows = (tiny_digg_pack.parent / "pack-work" / "transformer" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == TINY_TRANSFORMER["transformer_steps"]


def test_generate_writes_an_image_folder_with_a_manifest(tmp_path, tiny_digg_pack, tiny_data):
    out = tmp_path / "gen"
    generate(tiny_digg_pack, tiny_data, out)
    folder = ImageFolder(str(out))
    assert len(folder) == 10 and set(folder.classes) <= {"red", "green", "blue"}
    rows = read_manifest(out)
    assert [r["index"] for r in rows] == list(range(10))
    for row in rows:
        assert row["file"].split("/")[0] == Path(row["source"]).parent.name  # the source image's class
        assert len(row["mask"]) == 16 and row["mask"].count("1") >= 1 and row["shape"] in ("box", "block")
    assert folder[0][0].size == (16, 16)
    again = tmp_path / "again"
    generate(tiny_digg_pack, tiny_data, again)
    assert files(again) == files(out)  # deterministic by seed
    other = tmp_path / "other-seed"
    generate(tiny_digg_pack, tiny_data, other, "--seed", "1")
    assert files(other) != files(out)


def test_shards_together_are_the_unsharded_output_and_a_killed_run_resumes(tmp_path, tiny_digg_pack, tiny_data):
    whole = tmp_path / "whole"
    generate(tiny_digg_pack, tiny_data, whole)
    sharded = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):
        generate(tiny_digg_pack, tiny_data, sharded, "--shard", shard)
    assert files(sharded) == files(whole) and read_manifest(sharded) == read_manifest(whole)
    manifest = whole / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # killed while appending batch 2
    next(whole.glob("*/0000005.png")).unlink()  # a PNG of the unfinished batch is missing too
    generate(tiny_digg_pack, tiny_data, whole)
    assert files(whole) == files(sharded) and read_manifest(whole) == read_manifest(sharded)
    one_line_error(["generate", "--pack", tiny_digg_pack, "--data", tiny_data, "--out", whole, "--n", "10",
                    "--batch-size", "4", "--top-k", "3"], "holds images generated with another top_k")


@pytest.mark.parametrize("flags, needle", [
    (["--shard", "2/2"], "--shard 2/2"),
    (["--mask-ratio", "0,2"], "--mask-ratio"),
    (["--mask-shapes", "star"], "'star' is not one of box, block"),
    (["--n", "0"], "--n 0"),
])
def test_bad_generate_options_are_one_line(tmp_path, tiny_digg_pack, tiny_data, flags, needle):
    one_line_error(["generate", "--pack", tiny_digg_pack, "--data", tiny_data, "--out", tmp_path / "g", *flags], needle)


def test_a_pack_without_transformer_says_how_to_add_one(tmp_path, tiny_pack, tiny_data):
    line = one_line_error(["generate", "--pack", tiny_pack, "--data", tiny_data, "--out", tmp_path / "g"],
                          f"--pack {tiny_pack}: has no latent transformer")
    assert f"edgeft prime --out {tiny_pack} --resume --transformer-steps" in line
    one_line_error(tiny_args(tiny_data, tmp_path / "run", "--method", "digg", "--pack", tiny_pack), "--transformer-steps")
    one_line_error(tiny_args(tiny_data, tmp_path / "run2", "--method", "digg"), "--pack: DIGG needs a pack")
    one_line_error(tiny_args(tiny_data, tmp_path / "run3", "--method", "kdep", "--unlabeled", f"digg:{tiny_pack}"),
                   f"--unlabeled digg:{tiny_pack}: has no latent transformer")
    one_line_error(tiny_args(tiny_data, tmp_path / "run4", "--method", "kdep", "--unlabeled", "digg:missing"),
                   "--unlabeled digg:missing: no such directory")


def stages(out: Path) -> set[str]:
    """The finished training stages, without the pipeline's linear probe of the teacher (its accuracy figure)."""
    return {p.name for p in (out / "checkpoints").iterdir() if (p / "done.json").exists()} - {"teacher-probe"}


def test_digg_distils_on_generated_images_then_fine_tunes_and_resumes_without_regenerating(
        tmp_path, tiny_digg_pack, tiny_data):
    out = tmp_path / "digg"
    args = tiny_args(tiny_data, out, "--method", "digg", "--pack", tiny_digg_pack, "--n-generated", "8")
    ok(args)
    record = json.loads((out / "digg.json").read_text())
    assert record["kd_data"] == "digg" and record["distillation_images"] == 8 and record["generation"]["made"] == 8
    assert stages(out) == {"digg-distill", "finetune"}
    (generated,) = (out / "cache").glob("digg-*")
    assert len(ImageFolder(str(generated))) == 8
    stamp = (generated / "manifest.jsonl").stat().st_mtime_ns
    ok(args + ["--resume"])
    assert (generated / "manifest.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("kd_data, extra, images", [
    ("raw", [], 24),
    ("upstream", ["--unlabeled", "UPSTREAM", "--n-generated", "5"], 5),
])
def test_kd_data_variants(tmp_path, tiny_pack, tiny_data, kd_data, extra, images):
    extra = [str(tiny_pack.parent / "upstream") if e == "UPSTREAM" else e for e in extra]
    out = tmp_path / kd_data
    ok(tiny_args(tiny_data, out, "--method", "digg", "--kd-data", kd_data, *extra))  # no pack needed
    record = json.loads((out / "digg.json").read_text())
    assert (record["kd_data"], record["distillation_images"], record["generation"]) == (kd_data, images, None)


def test_kd_data_upstream_needs_the_upstream_images(tmp_path, tiny_data):
    one_line_error(tiny_args(tiny_data, tmp_path / "run", "--method", "digg", "--kd-data", "upstream"),
                   "--kd-data upstream: give the upstream images with --unlabeled")


def test_ota_adapts_the_teacher_with_irf_then_distils_it(tmp_path, tiny_digg_pack, tiny_data):
    out = tmp_path / "ota"
    args = tiny_args(tiny_data, out, "--method", "ota", "--pack", tiny_digg_pack, "--n-generated", "8")
    args[args.index("--teacher") + 1] = "resnet14t"
    ok(args)
    assert stages(out) == {"irf-deliver", "irf-calibrate", "digg-distill", "finetune"}
    assert json.loads((out / "irf.json").read_text())["adapted"].startswith("resnet14t")
    card = json.loads((out / "student" / "card.json").read_text())
    assert (card["arch"], card["method"]) == ("resnet10t", "ota")  # the run's model is the student
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["evaluated_as"] == "IRF-adapted"
    record = json.loads((out / "digg.json").read_text())
    assert (record["teacher_width"], record["student_width"]) == (2048, 512)  # distilled through a projector


def test_digg_irf_distils_the_unadapted_teacher_then_runs_irf_on_the_student(tmp_path, tiny_digg_pack, tiny_data):
    out = tmp_path / "digg-irf"
    args = tiny_args(tiny_data, out, "--method", "digg-irf", "--pack", tiny_digg_pack, "--n-generated", "8")
    args[args.index("--teacher") + 1] = "resnet14t"
    ok(args)
    assert stages(out) == {"digg-distill", "irf-deliver", "irf-calibrate"}
    assert json.loads((out / "irf.json").read_text())["adapted"].startswith("resnet10t")  # IRF on the student
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["evaluated_as"] == "linear probe" and summary["teacher"]["name"].startswith("resnet14t")


def test_kdep_distils_on_digg_images(tmp_path, tiny_digg_pack, tiny_data):
    out = tmp_path / "kdep"
    ok(tiny_args(tiny_data, out, "--method", "kdep", "--unlabeled", f"digg:{tiny_digg_pack}", "--n-generated", "8",
                 "--align", "linear"))
    assert json.loads((out / "kdep.json").read_text())["distillation_images"] == 8


def test_methods_lists_the_digg_methods():
    listing = ok(["methods"]).output
    assert all(name in listing for name in ("digg", "ota", "digg-irf"))


def test_bad_digg_cli_values_exit_2(tmp_path, tiny_data):
    result = invoke(tiny_args(tiny_data, tmp_path / "run", "--method", "digg", "--mask-ratio", "a,b"))
    assert result.exit_code == 2 and "--mask-ratio" in result.output
    one_line_error(["prime", "--data", tiny_data, "--out", tmp_path / "p", "--transformer-heads", "3",
                    "--transformer-width", "16"], "--transformer-width 16: must be a multiple of --transformer-heads")
