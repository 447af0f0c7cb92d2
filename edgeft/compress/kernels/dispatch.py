"""`--kernels auto|cuda|torch`: the fused CUDA kernels or the PyTorch reference (`compress.losses`).

- `torch`: always the reference.
- `cuda`: the fused kernels; anything that stops them (no GPU, no cuda-python, CPU tensors,
  an unsupported dtype, an NVRTC failure) is an EdgeftError.
- `auto` (default): the fused kernels for CUDA tensors they support when they compile, else the
  reference. The path taken is logged once per loss and reason.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from edgeft.compress import losses
from edgeft.compress.kernels import _runtime, aft, pts
from edgeft.errors import ConfigError, EdgeftError

log = logging.getLogger(__name__)

MODES = ("auto", "cuda", "torch")
_ANNOUNCED: set[tuple[str, str, str]] = set()


def check_mode(mode: str) -> str:
    """`mode` when it is a valid `--kernels` value that can run here, else a one-line EdgeftError.

    Call it before training starts so that `--kernels cuda` fails at once on a machine without CUDA.
    """
    if _valid(mode) == "cuda":
        if not torch.cuda.is_available():
            raise EdgeftError("--kernels cuda: no CUDA GPU is available here; use --kernels auto or torch")
        try:
            _runtime.get_launcher(torch.device("cuda"))
        except _runtime.KernelUnavailable as exc:
            raise EdgeftError(f"--kernels cuda: the fused kernels cannot run: {exc}") from None
    return mode


def kernel_distance(phi: torch.Tensor, psi: torch.Tensor | Sequence[torch.Tensor], weights: torch.Tensor,
                    kernels: str = "auto") -> torch.Tensor:
    """AFT's kernel distance (`losses.kernel_distance`); `psi` may be a list of teachers (concatenated)."""
    psis = [psi] if isinstance(psi, torch.Tensor) else list(psi)
    return _run("kernel_distance", kernels, [phi, weights, *psis], lambda: aft.unsupported(phi, psis, weights),
                lambda: aft.kernel_distance(phi, psis, weights),
                lambda: losses.kernel_distance(phi, psis[0] if len(psis) == 1 else torch.cat(psis, 1), weights))


def power_temperature_scale(f: torch.Tensor, T: float = 0.1, n: float = 3,  # noqa: N803 (paper's names)
                            kernels: str = "auto") -> torch.Tensor:
    """KDEP's PTS (`losses.power_temperature_scale`)."""
    return _run("power_temperature_scale", kernels, [f], lambda: pts.pts_unsupported(f),
                lambda: pts.power_temperature_scale(f, T, n), lambda: losses.power_temperature_scale(f, T, n))


def kdep_loss(student: torch.Tensor, teacher: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor,
              weight: float = 3.0, T: float = 0.1, n: float = 3, kernels: str = "auto") -> torch.Tensor:  # noqa: N803
    """KDEP's distillation loss `weight·MSE(student, PTS((teacher − mean) @ basis, T, n))`, gradient to `student`."""
    def reference() -> torch.Tensor:
        return weight * F.mse_loss(student, losses.power_temperature_scale((teacher - mean) @ basis, T, n))

    return _run("kdep_loss", kernels, [student, teacher, mean, basis],
                lambda: pts.kdep_unsupported(student, teacher, mean, basis),
                lambda: pts.kdep_loss(student, teacher, mean, basis, weight, T, n), reference)


def _run(name: str, mode: str, tensors: list[torch.Tensor], unsupported: Callable[[], str | None],
         fused: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`fused()` where `mode` and the inputs allow it, else `reference()`.

    EdgeftError where `--kernels cuda` cannot be honoured."""
    if _use_fused(name, mode, tensors, unsupported):
        try:
            return fused()
        except _runtime.KernelUnavailable as exc:  # a launch failed: later calls on this device take the reference
            if mode == "cuda":
                raise EdgeftError(f"--kernels cuda: the fused {name} failed: {exc}") from None
            _runtime.disable(tensors[0].device, exc)
            _announce(name, False, str(exc), logging.WARNING)
    return reference()


def _valid(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"--kernels {mode}: expected one of {', '.join(MODES)}")
    return mode


def _use_fused(name: str, mode: str, tensors: list[torch.Tensor], unsupported: Callable[[], str | None]) -> bool:
    if _valid(mode) == "torch":
        return _announce(name, False, "--kernels torch")
    device = tensors[0].device
    if not _runtime.has_launcher(device):
        if mode == "cuda":
            check_mode(mode)
            raise EdgeftError(f"--kernels cuda: {name} got {device.type} tensors; train on the GPU (--device cuda)")
        return _announce(name, False, f"{device.type} tensors")
    reason, level = unsupported(), logging.INFO
    if reason is None:
        try:
            _runtime.get_launcher(device)
        except _runtime.KernelUnavailable as exc:
            reason, level = str(exc), logging.WARNING
    if reason is not None:
        if mode == "cuda":
            raise EdgeftError(f"--kernels cuda: the fused {name} cannot run: {reason}")
        return _announce(name, False, reason, level)
    return _announce(name, True, str(device))


def _announce(name: str, fused: bool, reason: str, level: int = logging.INFO) -> bool:
    """Logs the path once per (loss, path, reason); returns `fused`."""
    key = (name, "fused" if fused else "torch", reason)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        path = "fused CUDA kernel" if fused else "PyTorch reference"
        log.log(level, "%s: %s (%s)", name, path, reason)
    return fused
