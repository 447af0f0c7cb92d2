"""Fused CUDA versions of the losses in `compress.losses` (NVRTC via cuda-python), same signatures.

Callers pick the implementation with `--kernels auto|cuda|torch` through `dispatch`:
`kernel_distance`, `power_temperature_scale` and `kdep_loss` take `kernels=` and fall back to the
PyTorch reference where the fused kernels cannot run (see `dispatch` for the rules).
"""
from __future__ import annotations

from edgeft.compress.kernels.dispatch import MODES, check_mode, kdep_loss, kernel_distance, power_temperature_scale

__all__ = ["MODES", "check_mode", "kdep_loss", "kernel_distance", "power_temperature_scale"]
