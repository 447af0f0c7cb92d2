"""Whether the Hugging Face hub can supply a model's weights here: a copy in the local cache, or a hub that
answers. Torch-free, so that a command can refuse an unobtainable model before importing torch."""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

HUB_HOST = ("huggingface.co", 443)
HUB_PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def cached(repo_id: str | None) -> bool:
    """Whether the local hub cache holds weights of `repo_id`."""
    if not repo_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in WEIGHT_FILES)


def any_timm_copy(arch: str) -> bool:
    """Whether the local hub cache holds any timm repository of `arch` (any pretrained tag), without timm."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    return any(root.glob(f"models--timm--{arch}")) or any(root.glob(f"models--timm--{arch}.*"))


def reachable() -> bool:
    """Whether the hub answers (never when HF_HUB_OFFLINE is set); probed once per process."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> bool:
    try:
        socket.create_connection(HUB_HOST, timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True
