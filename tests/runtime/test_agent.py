"""The profiling agent over loopback: round trip, token checks, size limit, upload hygiene."""
from __future__ import annotations

import http.client
import io
import json
import os
import threading
import urllib.error
import urllib.request
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from edgeft.errors import ConfigError, EdgeftError
from edgeft.runtime.agent import AgentConfig, AgentServer, profile_remote
from edgeft.runtime.profile import ProfileConfig

TOKEN = "s3cret-token-for-tests"
QUICK = ProfileConfig(warmup=1, iterations=3, seconds=0, threads=1, sweep=False, layer_runs=1)


@pytest.fixture
def agent(tmp_path: Path):
    server = AgentServer(AgentConfig(token=TOKEN, port=0, max_upload_mb=1.0, workdir=str(tmp_path / "uploads"),
                                     name="test-device"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _post(url: str, data: bytes, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/profile?iterations=2&seconds=0&sweep=false", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_remote_profile_round_trip(agent: AgentServer, tiny_onnx: Path) -> None:
    assert agent.server_address[0] == "127.0.0.1"
    record = profile_remote(tiny_onnx, agent.url, TOKEN, cfg=QUICK)
    assert record["label"] == "measured" and record["target"] == "test-device"
    assert record["remote"] == agent.url and record["engine"] == tiny_onnx.name
    assert record["latency_ms"]["p50"] > 0 and record["iterations"] >= 3
    assert list(agent.storage.iterdir()) == []  # the upload was deleted after profiling
    assert agent.storage.stat().st_mode & 0o077 == 0  # private directory


@pytest.mark.parametrize("token", [None, "wrong-token-value"])
def test_missing_or_wrong_token_is_401_and_stores_nothing(agent: AgentServer, tiny_onnx: Path, token: str | None) -> None:
    status, body = _post(agent.url, _zip({"m.onnx": tiny_onnx.read_bytes()}), token)
    assert status == 401 and "token" in body["error"]
    assert list(agent.storage.iterdir()) == []
    with pytest.raises(EdgeftError, match="--token"):
        profile_remote(tiny_onnx, agent.url, token or "x" * 10, cfg=QUICK)


def test_oversized_upload_is_refused_before_its_body_is_read(agent: AgentServer, tmp_path: Path) -> None:
    host, port = agent.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/profile")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(2 * 2**20))  # over the 1 MB limit; no body is sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "exceeds" in json.loads(response.read())["error"]
    conn.close()
    assert list(agent.storage.iterdir()) == []
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(2 * 2**20))  # incompressible: the client refuses it before uploading
    with pytest.raises(EdgeftError, match="upload limit"):
        profile_remote(big, agent.url, TOKEN, cfg=QUICK)


@pytest.mark.parametrize("name", ["../evil.onnx", "run.sh", "sub/m.onnx", ".hidden.onnx"])
def test_uploads_other_than_plain_engine_files_are_refused(agent: AgentServer, name: str) -> None:
    status, body = _post(agent.url, _zip({name: b"x"}), TOKEN)
    assert status == 400 and "not a plain engine" in body["error"]
    assert list(agent.storage.iterdir()) == []


def test_unreachable_agent_and_weak_token_are_clear_errors(tiny_onnx: Path) -> None:
    with pytest.raises(EdgeftError, match="cannot reach the agent"):
        profile_remote(tiny_onnx, "http://127.0.0.1:9", TOKEN, cfg=QUICK)
    with pytest.raises(ConfigError, match="--token"):
        AgentServer(AgentConfig(token="short", port=0))


def test_the_agent_refuses_an_engine_whose_fingerprint_does_not_fit(agent: AgentServer, tiny_onnx: Path) -> None:
    """The client sends export.json's fingerprint; the device compares it with its own runtime."""
    run = tiny_onnx.parent
    row = {"path": tiny_onnx.name, "format": "onnx", "precision": "fp32",
           "fingerprint": {"backend": "onnxruntime", "version": "99.0.0"}}
    (run / "export.json").write_text(json.dumps({"engines": [row]}))
    with pytest.raises(EdgeftError, match="onnxruntime 99.0.0 validated it.*rebuild it on this device"):
        profile_remote(tiny_onnx, agent.url, TOKEN, cfg=QUICK)
    row["fingerprint"]["version"] = "1.0.0"  # an older runtime validated it: this newer one reads it
    (run / "export.json").write_text(json.dumps({"engines": [row]}))
    points = profile_remote(tiny_onnx, agent.url, TOKEN, cfg=replace(QUICK, sweep=True, points=(1, 3)))
    assert [r["batch"] for r in points["throughput"]["sweep"]] == [1, 3]
