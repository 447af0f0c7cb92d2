"""Helpers shared by the tools/ scripts: paths, the standard split, provenance of a benchmark run."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR_ZIP = SHARED_DATA / "cifar10-jpg.zip"
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
UPSTREAM_CLASSES = ("airplane", "automobile", "ship", "truck", "horse")
DOWNSTREAM_CLASSES = ("bird", "cat", "deer", "dog", "frog")
DOWNSTREAM_FRACTION = 0.1  # 500 images per class


def require_cifar(path: Path = CIFAR_ZIP) -> Path:
    """The shared CIFAR-10 zip, or a clear exit when it is absent."""
    return require_shared(path.name, path)


def require_shared(name: str, path: Path | None = None) -> Path:
    """A zip of ../shared/data (see its README), or a clear exit when it is absent."""
    path = path or SHARED_DATA / name
    if not path.exists():
        sys.exit(f"skipped: {path} is absent (the benchmark needs ../shared/data/{name})")
    return path


def provenance(seed: int | None = None) -> dict:
    """Command, seed, hardware and versions for a results file."""
    import torch
    import timm

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seed": seed,
        "hardware": {"cpu": cpu, "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
        "commit": commit,
    }


def dump_json(path: Path, data: dict) -> None:
    from edgeft import artifacts

    artifacts.write_text(path, json.dumps(data, indent=2) + "\n")


def primed_pack(out: Path, options: dict, transformer: dict | None = None, **data) -> Path:
    """A benchmark pack primed once at `out` with `options` on `data` (PrimeConfig's data/classes), its latent
    transformer added with `transformer` when given and missing; a killed prime resumes."""
    from edgeft import artifacts
    from edgeft.console import RichProgress
    from edgeft.compress.generative.prime import prime
    from edgeft.config import PrimeConfig

    manifest = out / "pack.json"
    if not manifest.exists():
        resume = (out.parent / f"{out.name}-work" / "config.yaml").exists()
        prime(PrimeConfig(out=str(out), resume=resume, **options, **data), progress=RichProgress())
    if transformer and "transformer" not in artifacts.read_json(manifest):
        prime(PrimeConfig(out=str(out), resume=True, **transformer), dict(transformer), progress=RichProgress())
    return out


def pretrain_from_scratch(out: Path, arch: str, data: Path, image_size: int, epochs: int, batch_size: int = 128,
                          lr: float = 0.1, seed: int = 0, classes: tuple[str, ...] = ()) -> Path:
    """Supervised training of `arch` from random init (stl, SGD) into run directory `out`, cached: a finished
    run is returned as it is, a killed one continues from its last checkpoint."""
    from edgeft.artifacts import RunDir
    from edgeft.console import RichProgress
    from edgeft.compress.pipeline import run_compress
    from edgeft.config import CompressConfig

    run = RunDir(out)
    if run.summary.exists():
        return out
    cfg = CompressConfig(
        teacher=(), student=arch, student_weights="none", data=str(data), classes=classes, method="stl",
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=5e-4, image_size=image_size, seed=seed,
        out=str(out), resume=run.config.exists(),
    )
    summary = run_compress(cfg, progress=RichProgress)
    print(f"{arch} {image_size}px on {data.name}: held-out top-1 {summary['student']['accuracy']:.2%} "
          f"in {summary['seconds']:.0f} s")
    return out
