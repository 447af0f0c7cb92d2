"""A small profiling agent for a device (`edgeft agent`) and its client (`edgeft profile --remote`).

The agent needs numpy and the device's runtime only (standard-library HTTP). Every
request must carry `Authorization: Bearer TOKEN`; a wrong or missing token gets 401 before
any byte of the body is read. An upload is a zip of the engine file(s) (an OpenVINO .xml
with its .bin; an ONNX to be built with TensorRT on the device), refused above a size
limit, unpacked as plain files under a private (0700) directory, loaded by a runtime —
never executed — profiled, and deleted.
"""
from __future__ import annotations

import hmac
import io
import json
import logging
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import asdict, dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeft.artifacts import EXPORT_MANIFEST
from edgeft.errors import ConfigError, EdgeftError
from edgeft.runtime import BACKENDS, backend_for
from edgeft.runtime.fingerprint import FingerprintMismatch, find_record, machine_fingerprint, mismatches
from edgeft.runtime.profile import ProfileConfig, host_info, profile_engine

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".onnx", ".xml", ".engine", ".plan", ".trt")
DATA_SUFFIXES = (".bin", ".data")  # OpenVINO weights, ONNX external data
MAX_FILES = 8
DRAIN_BYTES = 64 * 1024  # a refused body up to this size is read and dropped, never stored


@dataclass(frozen=True)
class AgentConfig:
    """`edgeft agent` options."""

    token: str
    port: int = 8765
    host: str = "127.0.0.1"
    max_upload_mb: float = 512.0
    workdir: str | None = None
    name: str | None = None

    def check(self) -> None:
        if len(self.token) < 8:
            raise ConfigError("--token: use at least 8 characters (e.g. `python -c 'import secrets; print(secrets.token_hex(16))'`)")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port}: must be 0-65535")


class AgentServer(ThreadingHTTPServer):
    """The HTTP server; `storage` is the private upload directory."""

    daemon_threads = True

    def __init__(self, cfg: AgentConfig) -> None:
        cfg.check()
        self.cfg = cfg
        if cfg.workdir:
            self.storage = Path(cfg.workdir)
            self.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.storage.chmod(0o700)
        else:
            self.storage = Path(tempfile.mkdtemp(prefix="edgeft-agent-"))
        self.busy = threading.Lock()  # one profile at a time: concurrent runs would distort timings
        super().__init__((cfg.host, cfg.port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: AgentServer

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, error: str) -> None:
        """Answers an error before reading the body; a small body is drained (into nothing) so that
        closing the connection does not reset it under the client's feet."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and 0 < int(length) <= DRAIN_BYTES:
            self.rfile.read(int(length))
        self._reply(status, {"error": error})

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.cfg.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._refuse(401, "missing or wrong token")
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if urllib.parse.urlsplit(self.path).path != "/info":
            return self._refuse(404, "unknown path; use GET /info or POST /profile")
        self._reply(200, {"name": self.server.cfg.name or host_info()["hostname"], "host": host_info(),
                          "backends": {n: BACKENDS.get(n).available() for n in BACKENDS},
                          "max_upload_bytes": int(self.server.cfg.max_upload_mb * 2**20)})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/profile":
            return self._refuse(404, "unknown path; use POST /profile")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._refuse(411, "Content-Length required")
        limit = int(self.server.cfg.max_upload_mb * 2**20)
        if int(length) > limit:
            return self._refuse(413, f"upload of {int(length)} bytes exceeds the limit of {limit}")
        params = dict(urllib.parse.parse_qsl(url.query))
        body = self.rfile.read(int(length))
        folder = self.server.storage / uuid.uuid4().hex
        try:
            folder.mkdir(mode=0o700)
            engine = unpack(body, folder, limit, params.pop("engine", None))
            with self.server.busy:
                record = _profile(engine, params)
            record["engine"] = engine.name
            record["target"] = self.server.cfg.name or record["host"]["hostname"]
            status = 200
        except EdgeftError as exc:
            status, record = 400, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the agent answers every request, a runtime may fail anyhow
            log.exception("profiling failed")
            status, record = 500, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # before replying: nothing stays behind
        self._reply(status, record)


def _profile(engine: Path, params: dict[str, str]) -> dict:
    """Runs the profiler with the query's backend/precision/ProfileConfig fields."""
    backend, precision = params.pop("backend", None), params.pop("precision", None)
    _check_fingerprint(engine, backend, params.pop("fingerprint", ""))
    types = {f.name: f.type for f in fields(ProfileConfig)}
    unknown = [k for k in params if k not in types]
    if unknown:
        raise EdgeftError(f"unknown profile option {unknown[0]!r}")
    values: dict[str, Any] = {}
    for key, raw in params.items():
        kind = types[key]
        try:
            if "tuple" in kind:
                values[key] = tuple(int(v) for v in raw.split(",") if v)
            else:
                values[key] = raw == "true" if "bool" in kind else (float(raw) if "float" in kind else int(raw))
        except ValueError:
            raise EdgeftError(f"profile option {key}={raw!r} is not a number") from None
    return profile_engine(engine, backend, ProfileConfig(**values), precision=precision)


def _check_fingerprint(engine: Path, backend: str | None, recorded: str) -> None:
    """Refuses an engine whose export-manifest fingerprint (sent by the client) does not fit this device."""
    try:
        found = json.loads(recorded) if recorded else {}
    except json.JSONDecodeError:
        raise EdgeftError("fingerprint: not JSON") from None
    if found.get("backend") != (BACKENDS.canonical(backend) if backend else backend_for(engine)):
        return
    reasons = mismatches(found, machine_fingerprint(found["backend"]))
    if reasons:
        raise FingerprintMismatch(f"{engine.name}: built for another machine or runtime ({'; '.join(reasons)}); "
                                  f"rebuild it on this device ({EXPORT_MANIFEST}'s recipe, or `edgeft export` here)")


def unpack(body: bytes, folder: Path, limit: int, engine_name: str | None = None) -> Path:
    """Checks and writes the zip's plain files into `folder`; returns the engine file."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except zipfile.BadZipFile:
        raise EdgeftError("upload is not a zip archive") from None
    members = archive.infolist()
    if not members or len(members) > MAX_FILES:
        raise EdgeftError(f"upload must hold 1-{MAX_FILES} files")
    if sum(m.file_size for m in members) > limit:
        raise EdgeftError("unpacked upload exceeds the size limit")
    for member in members:
        name = member.filename
        if member.is_dir() or Path(name).name != name or name.startswith(".") or \
                not name.lower().endswith(ENGINE_SUFFIXES + DATA_SUFFIXES):
            raise EdgeftError(f"upload member {name!r} is not a plain engine or weights file")
    for member in members:
        (folder / member.filename).write_bytes(archive.read(member))
        (folder / member.filename).chmod(0o600)
    engines = [m.filename for m in members if m.filename.lower().endswith(ENGINE_SUFFIXES)]
    if engine_name is not None:
        if engine_name not in engines:
            raise EdgeftError(f"engine {engine_name!r} is not in the upload")
        return folder / engine_name
    if len(engines) != 1:
        raise EdgeftError("upload must hold exactly one engine file (or name it with engine=)")
    return folder / engines[0]


def _files_for(path: Path) -> list[Path]:
    """The engine and the weight files it needs (OpenVINO .bin, ONNX external data)."""
    extra = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
    extra += [p for p in path.parent.glob(f"{path.name}.data")] + [p for p in path.parent.glob(f"{path.stem}.data")]
    return [path, *[p for p in extra if p.is_file()]]


def profile_remote(path: str | Path, url: str, token: str, backend: str | None = None,
                   cfg: ProfileConfig = ProfileConfig(), precision: str | None = None, timeout_s: float = 900) -> dict:
    """Ships an engine to an agent, which profiles it on its device; returns the record.

    Asks GET /info first, so that a wrong token or an upload over the agent's limit fails
    before any engine bytes travel.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeftError(f"{path}: --remote takes an engine file (.onnx, .xml, .engine)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in _files_for(path):
            archive.write(file, file.name)
    info = _call(url, "/info", token, None, 60)
    if len(buffer.getvalue()) > info.get("max_upload_bytes", float("inf")):
        raise EdgeftError(f"{path}: {len(buffer.getvalue())} bytes exceed the agent's upload limit "
                          f"({info['max_upload_bytes']}); restart it with a larger --max-upload-mb")
    params = {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else str(v)
              for k, v in asdict(cfg).items() if v not in (None, ())}
    params.update({k: v for k, v in (("backend", backend), ("precision", precision), ("engine", path.name)) if v})
    found = find_record(path)  # the agent checks the fingerprint on the device
    if found and found[1].get("fingerprint"):
        params["fingerprint"] = json.dumps(found[1]["fingerprint"])
    record = _call(url, f"/profile?{urllib.parse.urlencode(params)}", token, buffer.getvalue(), timeout_s)
    record["remote"] = url
    return record


def _call(url: str, route: str, token: str, data: bytes | None, timeout_s: float) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/zip"
    request = urllib.request.Request(f"{url.rstrip('/')}{route}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise EdgeftError(f"--token: the agent at {url} refused it (401)") from None
        raise EdgeftError(f"--remote {url}: the agent answered {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EdgeftError(f"--remote {url}: cannot reach the agent ({getattr(exc, 'reason', exc)}); start it on the "
                          "device with `edgeft agent --port P --token T`") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error", "")
    except (ValueError, OSError):
        return exc.reason
