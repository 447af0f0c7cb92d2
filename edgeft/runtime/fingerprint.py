"""Engine fingerprints: what built and validated an engine, checked before the engine is loaded.

Every record in a run's export manifest carries the fingerprint of the machine and runtime that
validated its engine; `check_engine` compares it with this machine before an engine is
opened and refuses a mismatch with the command that rebuilds it (ECOSYSTEM.md pain point 1).

The policy differs per backend, because portability differs:

- **TensorRT** plans are not portable. A plan runs only with the TensorRT version that built
  it (unless built version-compatible, which edgeft does not do) and only on the GPU
  architecture it was built for (unless built hardware-compatible, Ampere+ only), and not
  across platforms: the TensorRT support matrix says so for every release. So the TensorRT
  version and the SM (compute capability) must match exactly, and where the engine was built
  on a Jetson the L4T (JetPack) release too, since each JetPack pins its own TensorRT/CUDA
  build. The GPU name and power mode are recorded but only warned about: the same SM runs the
  plan, a different power mode only changes the timings.
- **OpenVINO IR and ONNX** are portable formats read by any newer runtime (backward
  compatible), but an older runtime may not know the IR version or the opset that a newer
  one wrote and validated. So the engine is refused when this machine's runtime is older
  (major.minor) than the one that validated it; a newer one is accepted.

This module needs only the standard library (and the backend's own package for its version):
`edgeft.runtime` never imports torch.
"""
from __future__ import annotations

import importlib
import logging
import platform
import re
import shlex
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeft.artifacts import ExportManifest, RunDir
from edgeft.errors import EdgeftError

log = logging.getLogger(__name__)

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# CPU features that change which OpenVINO/ONNX Runtime kernels run (recorded, never compared).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "asimd", "asimddp",
             "sve")
EXACT = {"version": "TensorRT", "sm": "GPU SM", "l4t": "JetPack/L4T"}  # TensorRT: must match
WARN = {"gpu": "GPU", "power_mode": "power mode"}  # TensorRT: recorded, a difference is only warned about
MANIFEST_DEPTH = 3  # an engine sits at <run>/engines/<format>/<file>


class FingerprintMismatch(EdgeftError):
    """An engine was validated on a machine or runtime that this one cannot stand in for."""


def runtime_version(backend: str) -> str | None:
    """The installed version of a backend's runtime package (None when it is absent)."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}.get(backend, backend)
    for dist in (module, f"{module}-gpu", f"{module}-cu12", f"{module}-cu13"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # e.g. TensorRT from JetPack's apt packages carries no pip metadata
        return getattr(importlib.import_module(module), "__version__", None)
    except ImportError:
        return None


def machine_fingerprint(backend: str) -> dict[str, Any]:
    """This machine's fingerprint for engines of `backend` (onnxruntime, openvino, tensorrt)."""
    found: dict[str, Any] = {"backend": backend, "version": runtime_version(backend),
                             "machine": platform.machine(), "system": platform.system()}
    if backend == "tensorrt":
        found.update(gpu_info())
        found["l4t"] = l4t_release()
        found["power_mode"] = power_mode()
    else:
        found["isa"] = cpu_isa()
    return found


def mismatches(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Why an engine with fingerprint `recorded` must not be loaded here (empty: it may)."""
    backend = recorded.get("backend")
    if not recorded.get("version") or not here.get("version"):
        return []  # nothing recorded, or the runtime is absent here (loading says so itself)
    if backend == "tensorrt":
        reasons = [f"{label} {recorded[key]} (here {here.get(key) or 'none'})" for key, label in EXACT.items()
                   if recorded.get(key) and recorded[key] != here.get(key) and (key != "sm" or here.get(key))]
        for key, label in WARN.items():
            if recorded.get(key) and here.get(key) and recorded[key] != here[key]:
                log.warning("engine built with %s %s, here %s: timings will differ", label, recorded[key], here[key])
        return reasons
    if _major_minor(here["version"]) < _major_minor(recorded["version"]):
        return [f"{backend} {recorded['version']} validated it; {here['version']} here is older"]
    return []


def find_record(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """(run directory, export manifest row) of an engine file written by `edgeft export`, if any."""
    path = Path(path).resolve()
    for root in list(path.parents)[:MANIFEST_DEPTH]:
        if RunDir(root).export_manifest.is_file():
            for row in ExportManifest.read(root).engines:
                if (root / row.get("path", "")).resolve() == path:
                    return root, row
    return None


def rebuild_hint(run: Path, row: dict[str, Any]) -> str:
    """The commands that rebuild this engine on this machine."""
    command = f"edgeft export {shlex.quote(str(run))} --format {row['format']} --precision {row['precision']}"
    batch = row.get("batch")
    if isinstance(batch, dict):
        command += f" --batch-profile {batch['min']},{batch['opt']},{batch['max']}"
    elif isinstance(batch, int) and batch != 1:
        command += f" --batch {batch}"
    hint = f"rebuild it here: {command} (or `edgeft profile {shlex.quote(str(run))} --rebuild`)"
    recipe = row.get("recipe") or {}
    if recipe.get("trtexec"):
        hint += f", or in {recipe.get('workdir', 'engines/tensorrt')}: {recipe['trtexec']}"
    return hint


def stale_reasons(row: dict[str, Any]) -> list[str]:
    """Why the engine of an export manifest row cannot be loaded on this machine (empty: it can)."""
    recorded = row.get("fingerprint") or {}
    if not recorded.get("backend"):
        return []  # exported before fingerprints were recorded
    return mismatches(recorded, machine_fingerprint(recorded["backend"]))


def check_row(run: Path, row: dict[str, Any]) -> None:
    """Raises FingerprintMismatch with the rebuild command when the row's engine does not fit here."""
    reasons = stale_reasons(row)
    if reasons:
        raise FingerprintMismatch(
            f"{row['path']}: built for another machine or runtime ({'; '.join(reasons)}); {rebuild_hint(run, row)}"
        )


def check_engine(path: Path, backend: str) -> None:
    """Checks an engine file against its fingerprint in the export manifest when `backend` is what validated it."""
    found = find_record(path) if Path(path).is_file() else None
    if found is not None and (found[1].get("fingerprint") or {}).get("backend") == backend:
        check_row(*found)


@cache
def gpu_info() -> dict[str, str | None]:
    """Name, SM and CUDA runtime version of GPU 0: cuda-python, else nvidia-smi; None where unknown."""
    info: dict[str, str | None] = {"gpu": None, "sm": None, "cuda": None}
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            info.update(gpu=name.strip("\x00").strip(), sm=f"{props.major}.{props.minor}")
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            info["cuda"] = f"{version // 1000}.{version % 1000 // 10}"
        return info
    out = _command("nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader")
    if out and "," in out:
        name, sm = (part.strip() for part in out.splitlines()[0].split(",", 1))
        info.update(gpu=name, sm=sm)
    return info


def l4t_release() -> str | None:
    """The Jetson L4T release (JetPack's base, e.g. R36.3.0) from /etc/nv_tegra_release."""
    try:
        text = TEGRA_RELEASE.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else text.splitlines()[0].strip("# ").strip() or None


@cache
def power_mode() -> str | None:
    """The Jetson power mode from `nvpmodel -q` (e.g. 'MAXN (0)'), None off Jetson."""
    out = _command("nvpmodel", "-q")
    if not out:
        return None
    mode = re.search(r"Power Mode:\s*(\S+)", out)
    number = next((line.strip() for line in out.splitlines() if line.strip().isdigit()), None)
    if mode is None:
        return None
    return f"{mode.group(1)} ({number})" if number is not None else mode.group(1)


def cpu_isa() -> list[str]:
    """The CPU features among ISA_FLAGS that /proc/cpuinfo lists (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            line = next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return []
    flags = set(line.split(":", 1)[-1].split())
    return [f for f in ISA_FLAGS if f in flags]


def _command(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])
