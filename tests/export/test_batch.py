"""Static batch-1 engines by default; a dynamic batch only with an explicit profile, profiled at each point."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeft.errors import ConfigError
from edgeft.export import BatchShape
from edgeft.export.validate import fit_batch, run_batches
from edgeft.runtime.dispatch import profile_on_target
from edgeft.runtime.profile import ProfileConfig
from tests.export.conftest import make_run
from tests.test_cli import one_line_error, run

QUICK = ProfileConfig(warmup=1, iterations=3, seconds=0, threads=1, layers=False)


def _batch_dim(path) -> int | str:
    import onnx

    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value or dim.dim_param


def test_batch_shapes_parse_and_bad_profiles_name_the_flag():
    assert BatchShape.parse() == BatchShape(1) and BatchShape.parse().to_json() == 1
    shape = BatchShape.parse(profile="1,8,32")
    assert shape.dynamic and shape.size == 8 and shape.to_json() == {"min": 1, "opt": 8, "max": 32}
    assert BatchShape.from_json(shape.to_json()) == shape and BatchShape.from_json(4) == BatchShape(4)
    for bad in ("8,1,32", "1,8", "0,1,2", "a,b,c"):
        with pytest.raises(ConfigError, match=f"--batch-profile {bad}: give MIN,OPT,MAX"):
            BatchShape.parse(profile=bad)
    with pytest.raises(ConfigError, match="--batch 0"):
        BatchShape.parse(0)


def test_a_static_engine_is_fed_its_batch_and_the_tail_padded():
    seen = []

    def static_two(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[0] == 2
        seen.append(batch.shape[0])
        return batch.reshape(2, -1)[:, :3] + 1

    inputs = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    out = run_batches(fit_batch(static_two, 2), inputs, batch=32)
    assert out.shape == (5, 3) and seen == [2, 2, 2]
    np.testing.assert_array_equal(out, inputs[:, :3] + 1)


def test_an_explicit_profile_gives_a_dynamic_engine_profiled_at_each_point(tmp_path):
    root = make_run(tmp_path).root
    result = run(["export", str(root), "--format", "onnx,openvino,tensorrt", "--batch-profile", "1,2,4"])
    assert result.exit_code == 0, result.output
    rows = {r["format"]: r for r in json.loads((root / "export.json").read_text())["engines"]}
    assert {f: r["batch"] for f, r in rows.items()} == {f: {"min": 1, "opt": 2, "max": 4} for f in rows}
    assert isinstance(_batch_dim(root / rows["onnx"]["path"]), str)  # a named, dynamic axis
    trtexec = rows["tensorrt"]["recipe"]["trtexec"]
    assert "--minShapes=input:1x3x32x32 --optShapes=input:2x3x32x32 --maxShapes=input:4x3x32x32" in trtexec
    assert rows["tensorrt"]["recipe"]["edgeft"].endswith("--batch-profile 1,2,4")
    records = profile_on_target(root, "host", None, QUICK)
    sweeps = {r["backend"]: [row["batch"] for row in r["throughput"]["sweep"]] for r in records}
    assert sweeps["onnxruntime"] == [1, 2, 4] and sweeps["openvino"] == [1, 2, 4]
    assert all(row["latency_ms_p99"] >= row["latency_ms_p50"] > 0 for r in records for row in r["throughput"]["sweep"])


def test_a_bad_batch_profile_fails_before_any_export(tmp_path):
    root = make_run(tmp_path).root
    one_line_error(run(["export", str(root), "--batch-profile", "4,2,1"]), "--batch-profile 4,2,1")
    assert not (root / "engines").exists()


def test_an_on_device_tensorrt_build_uses_the_recorded_profile(tmp_path):
    from edgeft.runtime.tensorrt import recorded_profile

    onnx_file = tmp_path / "engines" / "tensorrt" / "model-fp16.onnx"
    onnx_file.parent.mkdir(parents=True)
    onnx_file.write_bytes(b"onnx")
    row = {"path": "engines/tensorrt/model-fp16.onnx", "format": "tensorrt", "precision": "fp16",
           "batch": {"min": 1, "opt": 8, "max": 32}}
    (tmp_path / "export.json").write_text(json.dumps({"engines": [row]}))
    assert recorded_profile(onnx_file) == (1, 8, 32)
    (tmp_path / "export.json").write_text(json.dumps({"engines": [{**row, "batch": 1}]}))
    assert recorded_profile(onnx_file) is None
