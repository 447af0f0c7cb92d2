"""Fused AFT kernel distance (aft.cu): parameters, work plan and the autograd Function.

Same result as `edgeft.compress.losses.kernel_distance(phi, cat(psis, 1), weights)` in one
cooperative launch forward and one backward, for one or several teachers.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from edgeft.compress.kernels._runtime import get_launcher, workspace

MAX_TEACHERS = 8  # AFT_MAX_TEACHERS in aft.cu
TILE, CHUNK, THREADS = 64, 16, 256
SMEM = 21824  # sizeof(AftSmem), asserted in aft.cu
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong


class AftParams(ctypes.Structure):
    """Mirror of `struct AftParams` in aft.cu (same order, native alignment)."""

    _fields_ = [
        ("phi", _P), ("psi", _P * MAX_TEACHERS), ("w", _P), ("grad_out", _P), ("loss_out", _P), ("dphi", _P),
        ("dpsi", _P * MAX_TEACHERS), ("dw", _P), ("mean", _P), ("partial", _P), ("dmat", _P), ("norms", _P),
        ("rho_part", _P), ("rho", _P), ("loss_part", _P), ("loss", _P), ("dc", _P), ("col_part", _P),
        ("w_part", _P), ("barrier", _P), ("ld_phi", _L), ("ld_psi", _L * MAX_TEACHERS), ("dim", _I * MAX_TEACHERS),
        ("n_teachers", _I), ("batch", _I), ("d_phi", _I), ("d_psi", _I), ("n_tiles", _I), ("pairs", _I),
        ("split", _I), ("psi_grad", _I), ("w_grad", _I), ("loss_bf16", _I),
    ]


@dataclass(frozen=True)
class Plan:
    """How the B×B kernel work is cut into tiles for one problem size."""

    batch: int
    d_phi: int
    dims: tuple[int, ...]  # teacher widths
    d_psi: int
    n_tiles: int  # 64-row tiles of the batch
    pairs: int  # tile pairs (I <= J) of the symmetric B×B kernels
    split: int  # slices of the feature dimension in the forward Gram products

    def forward_items(self) -> int:
        """Work items of the largest forward phase (a grid larger than this idles)."""
        return max(-(-(self.d_phi + self.d_psi) // 32), self.split * self.pairs, 4 * self.pairs,
                   -(-2 * self.batch // THREADS))

    def backward_items(self, teachers: bool) -> int:
        tiles = -(-self.d_phi // TILE) + (sum(-(-d // TILE) for d in self.dims) if teachers else 0)
        return self.n_tiles * tiles


def make_plan(batch: int, d_phi: int, dims: Sequence[int], capacity: int) -> Plan:
    """Balances the forward: K slices to fill the `capacity` blocks in one wave, few enough that
    reducing them (per tile, in the epilogue) costs less than the Gram products they parallelise."""
    n_tiles = -(-batch // TILE)
    pairs = n_tiles * (n_tiles + 1) // 2
    chunks = -(-d_phi // CHUNK) + sum(-(-d // CHUNK) for d in dims)
    split = min(capacity // pairs, math.ceil(math.sqrt(d_phi + sum(dims)) / 2), chunks // 2)
    return Plan(batch, d_phi, tuple(dims), sum(dims), n_tiles, pairs, max(1, split))


def unsupported(phi: torch.Tensor, psis: Sequence[torch.Tensor], weights: torch.Tensor) -> str | None:
    """Why the fused kernel cannot take these inputs, or None when it can."""
    if not psis:
        return "no teacher features"
    if any(t.device != phi.device for t in [weights, *psis]):
        return "inputs on different devices"
    if phi.dim() != 2 or any(p.dim() != 2 or p.shape[0] != phi.shape[0] for p in psis) or weights.dim() != 1:
        return "shapes must be phi [B, dφ], psi [B, dψ], weights [dψ]"
    if weights.shape[0] != sum(p.shape[1] for p in psis):
        return f"weights has {weights.shape[0]} entries for {sum(p.shape[1] for p in psis)} teacher features"
    if phi.shape[0] == 0 or phi.shape[1] == 0 or any(p.shape[1] == 0 for p in psis):
        return "empty inputs"
    if any(t.dtype not in DTYPES for t in [phi, *psis]):
        return f"dtypes {phi.dtype}/{[p.dtype for p in psis]} (float32 or bfloat16)"
    if not weights.is_floating_point() or _loss_dtype(phi, psis, weights) not in DTYPES:
        return f"weights dtype {weights.dtype}"
    return None


def kernel_distance(phi: torch.Tensor, psis: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Fused `losses.kernel_distance(phi, cat(psis, 1), weights)`; inputs checked with `unsupported`."""
    dtype = phi.dtype if all(p.dtype == phi.dtype for p in psis) else torch.float32  # one kernel dtype
    phi, psis = phi.to(dtype), [p.to(dtype) for p in psis]
    if len(psis) > MAX_TEACHERS:
        psis = [torch.cat(psis, 1)]
    return _KernelDistance.apply(phi, weights, *psis)


def _loss_dtype(phi: torch.Tensor, psis: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(phi.dtype, psis[0].dtype), weights.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """`x` itself when its rows are contiguous (any row stride), else a contiguous copy."""
    return x if x.stride(1) == 1 else x.contiguous()


def _params(plan: Plan, phi: torch.Tensor, w: torch.Tensor, psis: Sequence[torch.Tensor],
            **addresses: int) -> AftParams:
    p = AftParams(phi=phi.data_ptr(), w=w.data_ptr(), ld_phi=phi.stride(0), n_teachers=len(psis),
                  batch=plan.batch, d_phi=plan.d_phi, d_psi=plan.d_psi, n_tiles=plan.n_tiles, pairs=plan.pairs,
                  split=plan.split)
    for k, psi in enumerate(psis):
        p.psi[k], p.ld_psi[k], p.dim[k] = psi.data_ptr(), psi.stride(0), psi.shape[1]
    for name, value in addresses.items():
        if name == "dpsi":
            for k, address in enumerate(value):
                p.dpsi[k] = address
        else:
            setattr(p, name, value)
    return p


class _KernelDistance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi: torch.Tensor, weights: torch.Tensor, *psis: torch.Tensor) -> torch.Tensor:
        launcher = get_launcher(phi.device)
        phi, psis = _rows(phi), [_rows(p) for p in psis]
        w = weights.float().contiguous()
        kind = DTYPES[phi.dtype]
        capacity = launcher.max_blocks(f"aft_forward_{kind}", SMEM)
        plan = make_plan(phi.shape[0], phi.shape[1], [p.shape[1] for p in psis], capacity)
        b, dt = plan.batch, plan.d_phi + plan.d_psi
        saved, kept = workspace(phi.device, mean=dt, dmat=b * b, norms=2 * b, rho=2 * b, loss=1)
        scratch, temp = workspace(phi.device, partial=plan.split * plan.pairs * 2 * TILE * TILE,
                                  rho_part=2 * 4 * plan.n_tiles * b, loss_part=4 * plan.pairs)
        loss_dtype = _loss_dtype(phi, psis, weights)
        out = torch.empty((), dtype=loss_dtype, device=phi.device)
        params = _params(plan, phi, w, psis, loss_out=out.data_ptr(), barrier=launcher.barrier(),
                         loss_bf16=int(loss_dtype == torch.bfloat16), **kept, **temp)
        launcher.launch(f"aft_forward_{kind}", min(capacity, plan.forward_items()), params, SMEM, True)
        del scratch  # stream-ordered: reused only by work queued after this launch
        ctx.save_for_backward(phi, w, saved, *psis)
        ctx.plan, ctx.kind, ctx.kept, ctx.loss_dtype, ctx.weights_dtype = plan, kind, kept, loss_dtype, weights.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        phi, w, _saved, *psis = ctx.saved_tensors
        plan, need = ctx.plan, ctx.needs_input_grad
        psi_grad, w_grad = any(need[2:]), need[1]
        launcher = get_launcher(phi.device)
        dphi = torch.empty(phi.shape, dtype=phi.dtype, device=phi.device)
        dpsi = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in psis] if psi_grad else []
        dw = torch.empty(plan.d_psi, dtype=torch.float32, device=phi.device) if w_grad else None
        b, dt = plan.batch, plan.d_phi + plan.d_psi
        scratch, temp = workspace(phi.device, dc=b * dt, col_part=plan.n_tiles * dt, w_part=plan.n_tiles * plan.d_psi)
        grad = grad.to(ctx.loss_dtype).contiguous()
        params = _params(plan, phi, w, psis, grad_out=grad.data_ptr(), dphi=dphi.data_ptr(),
                         dpsi=[t.data_ptr() for t in dpsi], dw=0 if dw is None else dw.data_ptr(),
                         barrier=launcher.barrier(), psi_grad=int(psi_grad), w_grad=int(w_grad),
                         loss_bf16=int(ctx.loss_dtype == torch.bfloat16), **ctx.kept, **temp)
        name = f"aft_backward_{ctx.kind}"
        grid = min(launcher.max_blocks(name, SMEM), plan.backward_items(psi_grad or w_grad))
        launcher.launch(name, grid, params, SMEM, True)
        del scratch
        grads_psi = [d if n else None for d, n in zip(dpsi, need[2:])] if psi_grad else [None] * len(psis)
        return (dphi if need[0] else None, dw.to(ctx.weights_dtype) if w_grad else None, *grads_psi)
