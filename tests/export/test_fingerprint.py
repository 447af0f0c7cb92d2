"""Engine fingerprints: recorded at export, checked before loading, refused with the rebuild command, --rebuild."""
from __future__ import annotations

import json

import onnxruntime
import pytest

from edgeft.export import export_run
from edgeft.runtime import load
from edgeft.runtime import fingerprint as fp
from tests.export.conftest import make_run
from tests.test_cli import one_line_error, run

QUICK = ["--backend", "onnxruntime", "--iterations", "3", "--seconds", "0", "--warmup", "1", "--threads", "1",
         "--no-layers"]
TRT = {"backend": "tensorrt", "version": "10.3.0", "sm": "8.7", "gpu": "Orin", "cuda": "12.6", "l4t": "R36.4.0",
       "power_mode": "MAXN (0)"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run with its student exported to ONNX fp32 on this machine (static batch 1, the default)."""
    run_dir = make_run(tmp_path_factory.mktemp("fingerprint"))
    (record,) = export_run(run_dir.root, ["onnx"], ["fp32"]).records
    return run_dir.root, record


def test_the_record_carries_this_machines_fingerprint(exported):
    root, record = exported
    assert record.fingerprint["backend"] == "onnxruntime"
    assert record.fingerprint["version"] == onnxruntime.__version__
    assert record.fingerprint["machine"] and isinstance(record.fingerprint["isa"], list)
    assert record.opset == 18
    row = json.loads((root / "export.json").read_text())["engines"][0]
    assert row["fingerprint"] == record.fingerprint and row["opset"] == 18
    assert fp.stale_reasons(row) == []


def test_a_manifest_edited_to_another_version_is_refused_with_the_rebuild_command(exported):
    root, record = exported
    manifest = root / "export.json"
    data = json.loads(manifest.read_text())
    data["engines"][0]["fingerprint"]["version"] = "99.1.0"
    manifest.write_text(json.dumps(data))
    result = run(["profile", str(root), *QUICK])
    one_line_error(result, "onnxruntime 99.1.0 validated it", f"edgeft export {root} --format onnx --precision fp32",
                   "--rebuild")
    assert not (root / "profiles").exists()  # refused before anything was measured
    with pytest.raises(fp.FingerprintMismatch, match="is older"):
        load(root / record.path)

    rebuilt = run(["profile", str(root), "--rebuild", *QUICK])
    assert rebuilt.exit_code == 0, rebuilt.output
    row = json.loads(manifest.read_text())["engines"][0]
    assert row["fingerprint"]["version"] == onnxruntime.__version__
    records = json.loads((root / "profiles" / "host.json").read_text())["records"]
    assert [(r["engine"], r["label"]) for r in records] == [(record.path, "measured")]
    again = run(["profile", str(root), "--rebuild", *QUICK])
    assert again.exit_code == 0 and "nothing rebuilt" in again.output


def test_rebuild_needs_a_run_directory(tmp_path):
    engine = tmp_path / "model.onnx"
    engine.write_bytes(b"x")
    one_line_error(run(["profile", str(engine), "--rebuild"]), "--rebuild: pass a run directory")


@pytest.mark.parametrize(("here", "refused"), [
    ({}, []),
    ({"version": "10.3.1"}, ["TensorRT 10.3.0 (here 10.3.1)"]),
    ({"sm": "8.6"}, ["GPU SM 8.7 (here 8.6)"]),
    ({"l4t": None, "sm": None}, ["JetPack/L4T R36.4.0 (here none)"]),
    ({"gpu": "Orin NX", "power_mode": "15W (1)"}, []),  # warned about, not refused
])
def test_tensorrt_needs_the_same_version_sm_and_jetpack(here, refused):
    assert fp.mismatches(TRT, {**TRT, **here}) == refused


@pytest.mark.parametrize(("recorded", "here", "refused"), [
    ("1.20.1", "1.20.0", False),  # same major.minor: the same opsets and IR
    ("1.20.1", "1.22.0", False),  # newer runtimes read older models
    ("1.20.1", "1.19.2", True),
    ("2025.1.0", "2024.6.0", True),
])
def test_portable_formats_refuse_only_an_older_runtime(recorded, here, refused):
    for backend in ("onnxruntime", "openvino"):
        reasons = fp.mismatches({"backend": backend, "version": recorded}, {"backend": backend, "version": here})
        assert bool(reasons) == refused and all("older" in r for r in reasons)


def test_no_recorded_fingerprint_or_no_runtime_here_is_not_a_mismatch():
    assert fp.stale_reasons({"path": "engines/onnx/model-fp32.onnx"}) == []
    assert fp.mismatches(TRT, {"backend": "tensorrt", "version": None}) == []


def test_the_rebuild_hint_keeps_the_batch_profile_and_the_trtexec_recipe(tmp_path):
    row = {"format": "tensorrt", "precision": "fp16", "batch": {"min": 1, "opt": 8, "max": 32},
           "recipe": {"trtexec": "trtexec --onnx=model-fp16.onnx", "workdir": "engines/tensorrt"}}
    hint = fp.rebuild_hint(tmp_path, row)
    assert f"edgeft export {tmp_path} --format tensorrt --precision fp16 --batch-profile 1,8,32" in hint
    assert hint.endswith("in engines/tensorrt: trtexec --onnx=model-fp16.onnx")


def test_jetson_release_and_power_mode_are_read(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(fp, "TEGRA_RELEASE", release)
    assert fp.l4t_release() == "R36.4.3"
    monkeypatch.setattr(fp, "TEGRA_RELEASE", tmp_path / "absent")
    assert fp.l4t_release() is None
    fp.power_mode.cache_clear()
    monkeypatch.setattr(fp, "_command", lambda *argv: "NV Power Mode: MAXN_SUPER\n2")
    assert fp.power_mode() == "MAXN_SUPER (2)"
    fp.power_mode.cache_clear()


def test_a_tensorrt_fingerprint_names_every_field():
    found = fp.machine_fingerprint("tensorrt")
    assert {"backend", "version", "gpu", "sm", "cuda", "l4t", "power_mode", "machine"} <= set(found)
    assert found["backend"] == "tensorrt"
