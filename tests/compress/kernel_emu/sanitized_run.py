"""Runs the odd-shaped kernel cases on the AddressSanitizer build of the emulator (argv[1]).

Started by tests/compress/test_kernels.py with libasan preloaded; prints 'ok' when every case
ran without a sanitizer report and matched the reference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from edgeft.compress.kernels import _runtime, dispatch
from tests.compress.kernel_emu.emulator import Emulator
from tests.compress.test_kernels import (aft_inputs, assert_rel, fused_and_grads, kdep_inputs,
                                         reference_and_grads)


def main(lib: str) -> None:
    _runtime.register_launcher("cpu", lambda device: Emulator(Path(lib)))
    for batch, d_phi, dims, dtype, tol in [(70, 20, (7, 1, 64, 17), torch.float32, 1e-5),
                                           (33, 8, (40,), torch.bfloat16, 1e-2)]:
        phi, psis, s = aft_inputs(batch, d_phi, dims, dtype=dtype)
        value, grads = fused_and_grads(phi, psis, s)
        expected, expected_grads = reference_and_grads(phi, psis, s)
        assert_rel(value, expected, 1e-5)
        for mine, theirs in zip(grads, expected_grads):
            assert_rel(mine, theirs, tol)
    phi, psis, _ = aft_inputs(20, 9, (20, 30), psi_grad=False)
    dispatch.kernel_distance(phi, psis, torch.ones(50), kernels="cuda").backward()
    student, teacher, mean, basis = kdep_inputs(batch=70, k=40, dt=50)
    dispatch.kdep_loss(student, teacher, mean, basis, kernels="cuda").backward()
    f = torch.randn(7, 99, requires_grad=True)
    dispatch.power_temperature_scale(f, kernels="cuda").sum().backward()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
