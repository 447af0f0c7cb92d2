"""`edgeft prime` (pack, resume, no image data), IRF end to end with its ablations and search,
--teacher-from, the Fréchet distance, and bad --pack input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edgeft.cli import cli
from edgeft.compress.generative.frechet import frechet_between
from edgeft.compress.generative.pack import load_pack
from edgeft.compress.generative.prime import prime
from edgeft.config import PrimeConfig
from edgeft.errors import EdgeftError
from tests.conftest import TINY_PRIME, tiny_args

VQGAN_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "quantizer.", "post_quant_conv.")


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def ok(args: list[str]):
    result = invoke(args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_prime_writes_a_portable_pack_without_image_data(tiny_pack):
    assert {p.name for p in tiny_pack.iterdir()} == {"vqgan.safetensors", "pack.json", "card.md"}
    meta = json.loads((tiny_pack / "pack.json").read_text())
    assert meta["heldout"]["images"] == 4 and np.isfinite(meta["heldout"]["psnr_db"])
    assert meta["training"]["perceptual_weight"] == 0.0 and any("LPIPS" in d for d in meta["deviations"])
    weights = load_file(str(tiny_pack / "vqgan.safetensors"))
    assert all(k.startswith(VQGAN_PREFIXES) for k in weights)  # model parameters only
    assert all(t.is_floating_point() for t in weights.values())  # no uint8 pixel arrays
    work = tiny_pack.parent / "pack-work"
    assert (work / "heldout-grid.png").exists()  # the picture of upstream images stays outside the pack
    assert "no images" in (tiny_pack / "card.md").read_text()
    loaded = load_pack(str(tiny_pack))
    assert loaded.vqgan.cfg.channels == 8 and not any(p.requires_grad for p in loaded.vqgan.parameters())


def test_a_pack_primed_without_the_gan_phase_says_so(tmp_path, tiny_pack):
    assert "PatchGAN from step 2" in (tiny_pack / "card.md").read_text()  # the GAN ran in steps 2-3
    assert not any("PatchGAN phase" in d for d in json.loads((tiny_pack / "pack.json").read_text())["deviations"])
    options = {**TINY_PRIME, "disc_start": TINY_PRIME["steps"]}
    meta = prime(PrimeConfig(data=str(tiny_pack.parent / "upstream"), out=str(tmp_path / "pack"), **options))
    assert any("no PatchGAN phase" in d for d in meta["deviations"])
    assert "no PatchGAN phase" in (tmp_path / "pack" / "card.md").read_text()


class _StopAfter:
    """A progress sink that kills the run after `steps` optimiser steps."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def start(self, stage, total):
        pass

    def advance(self, steps, **fields):
        self.left -= steps
        if self.left < 0:
            raise KeyboardInterrupt

    def finish(self):
        pass


def test_prime_resumes_a_killed_run_to_the_same_weights(tmp_path, tiny_pack):
    upstream = tiny_pack.parent / "upstream"
    cfg = PrimeConfig(data=str(upstream), out=str(tmp_path / "pack"), **TINY_PRIME, checkpoint_every=2, eval_every=2)
    with pytest.raises(KeyboardInterrupt):
        prime(cfg, progress=_StopAfter(2))  # killed in step 3: the checkpoint of step 2 remains
    assert not (tmp_path / "pack" / "pack.json").exists()
    refused = invoke(["prime", "--data", str(upstream), "--out", str(tmp_path / "pack")])
    assert refused.exit_code == 2 and "--resume" in refused.output
    ok(["prime", "--data", str(upstream), "--out", str(tmp_path / "pack"), "--resume"])
    resumed = load_file(str(tmp_path / "pack" / "vqgan.safetensors"))
    straight = load_file(str(tiny_pack / "vqgan.safetensors"))  # the same options, never interrupted
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-5) for k in straight)
    rows = [json.loads(line) for line in (tmp_path / "pack-work" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]


def test_irf_adapts_the_teacher_in_four_stages_and_other_methods_distil_from_it(tmp_path, tiny_data, tiny_pack):
    out = tmp_path / "irf"
    args = tiny_args(tiny_data, out, "--method", "irf", "--pack", str(tiny_pack))
    args[args.index("--teacher") + 1] = "resnet14t"  # differs from the student: the run's model is the teacher
    ok(args)
    record = json.loads((out / "irf.json").read_text())
    assert (record["deliver_data"], record["calib_data"]) == ("rec", "original")
    assert record["pack"]["sha256"] == json.loads((tiny_pack / "pack.json").read_text())["sha256"]
    done = {p.name for p in (out / "checkpoints").iterdir() if (p / "done.json").exists()}
    assert done == {"irf-deliver", "irf-calibrate"}
    assert list((out / "cache").glob("irf-rec-*.safetensors"))  # assembling is cached
    norms = [load_file(str(p))["features"].norm(dim=1).mean().item() for p in (out / "cache").glob("[0-9a-f]*")]
    assert len(norms) == 2 and max(norms) < 3 * min(norms)  # re-represented images are fed in [0, 1] like the originals
    card = json.loads((out / "student" / "card.json").read_text())
    assert (card["arch"], card["method"]) == ("resnet14t", "irf")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == summary["student"]["accuracy"] == record["accuracy"]

    kd = tmp_path / "kd"
    kd_args = tiny_args(tiny_data, kd, "--method", "kd", "--teacher-from", str(out))
    del kd_args[1:5]  # no --teacher / --teacher-weights: the irf run is the teacher
    ok(kd_args)
    assert json.loads((kd / "summary.json").read_text())["teacher"]["name"] == "resnet14t"


def test_irf_ablation_flags_and_search(tmp_path, tiny_data, tiny_pack):
    out = tmp_path / "irf-ablation"
    ok(tiny_args(tiny_data, out, "--method", "irf", "--pack", str(tiny_pack), "--deliver-data", "mixed",
                 "--calib-data", "rec", "--search", "--epochs", "1"))
    record = json.loads((out / "irf.json").read_text())
    assert (record["deliver_data"], record["calib_data"]) == ("mixed", "rec")
    grid = record["search_holdout_accuracy"]
    assert set(grid["deliver_lr"]) == {"1", "0.1", "0.01", "0.001"}
    assert len(grid["calibrate"]) == 6  # 4 lr at wd 1e-4, then the 2 other wd at the best lr
    assert record["deliver_lr"] in (1.0, 0.1, 0.01, 0.001)


@pytest.mark.parametrize("flag, needle", [
    ([], "--pack"),
    (["--pack", "/no/such/pack"], "--pack /no/such/pack: no such directory"),
    (["--pack", "EMPTY"], "not an edgeft pack"),
])
def test_bad_pack_is_one_line_naming_the_flag(tmp_path, tiny_data, flag, needle):
    flag = [str(tmp_path) if f == "EMPTY" else f for f in flag]
    result = invoke(tiny_args(tiny_data, tmp_path / "bad", "--method", "irf", *flag))
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_tampered_pack_weights_are_refused(tmp_path, tiny_pack):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("pack.json", "card.md"):
        (copy / name).write_bytes((tiny_pack / name).read_bytes())
    (copy / "vqgan.safetensors").write_bytes((tiny_pack / "vqgan.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EdgeftError, match="--pack .*sha256"):
        load_pack(str(copy))


def test_teacher_from_needs_a_finished_run(tmp_path, tiny_data):
    args = tiny_args(tiny_data, tmp_path / "kd", "--method", "kd", "--teacher-from", str(tmp_path))
    result = invoke(args[:1] + args[5:])
    assert result.exit_code == 2 and "--teacher-from" in result.stderr


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.5
    assert frechet_between(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_between(x, y) == pytest.approx(frechet_between(y, x), rel=1e-6)
    shifts = [frechet_between(x, x + s) for s in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-6)  # ‖Δμ‖² for a pure shift
    assert frechet_between(x, y) > 0
