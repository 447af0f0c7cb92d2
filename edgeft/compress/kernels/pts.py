"""Fused KDEP target and loss (pts.cu): PTS forward/backward and projection + PTS + MSE in one launch.

`power_temperature_scale(f, T, n)` equals `losses.power_temperature_scale`; `kdep_loss` equals
`weight * mse_loss(student, losses.power_temperature_scale((teacher - mean) @ basis, T, n))`
with the gradient flowing to `student` only (the target is a constant, as in KDEP).
"""
from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from edgeft.compress.kernels._runtime import get_launcher, workspace

DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}
TILE, CHUNK, THREADS = 64, 16, 256
SMEM = 8832  # sizeof(KdepSmem), asserted in pts.cu

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_float


class PtsParams(ctypes.Structure):
    """Mirror of `struct PtsParams` in pts.cu."""

    _fields_ = [("x", _P), ("y", _P), ("gy", _P), ("gx", _P), ("numel", _L), ("T", _F), ("inv_n", _F)]


class KdepParams(ctypes.Structure):
    """Mirror of `struct KdepParams` in pts.cu."""

    _fields_ = [
        ("student", _P), ("teacher", _P), ("mean", _P), ("basis", _P), ("grad_out", _P), ("loss_out", _P),
        ("dstudent", _P), ("partial", _P), ("diff", _P), ("loss_part", _P), ("loss", _P), ("barrier", _P),
        ("ld_student", _L), ("ld_teacher", _L), ("batch", _I), ("d_teacher", _I), ("dim", _I), ("row_tiles", _I),
        ("col_tiles", _I), ("split", _I), ("loss_bf16", _I), ("T", _F), ("inv_n", _F), ("weight", _F),
    ]


def check_pts(T: float, n: float) -> None:  # noqa: N803 (paper's names)
    """The PTS arguments the transform is defined for."""
    if T <= 0 or n <= 0:
        raise ValueError(f"power_temperature_scale: T and n must be positive (got T={T}, n={n})")


def pts_unsupported(f: torch.Tensor) -> str | None:
    """Why the fused PTS cannot take `f`, or None."""
    return None if f.dtype in DTYPES else f"dtype {f.dtype} (float32 or bfloat16)"


def kdep_unsupported(student: torch.Tensor, teacher: torch.Tensor, mean: torch.Tensor,
                     basis: torch.Tensor) -> str | None:
    """Why the fused KDEP loss cannot take these inputs, or None."""
    if any(t.device != student.device for t in (teacher, mean, basis)):
        return "inputs on different devices"
    if any(t.requires_grad for t in (teacher, mean, basis)):
        return "teacher, mean and basis must be constants (no gradient)"
    if student.dim() != 2 or teacher.dim() != 2 or mean.dim() != 1 or basis.dim() != 2:
        return "shapes must be student [B, k], teacher [B, Dt], mean [Dt], basis [Dt, k]"
    if teacher.shape[0] != student.shape[0] or basis.shape != (teacher.shape[1], student.shape[1]) \
            or mean.shape[0] != teacher.shape[1]:
        shapes = ", ".join(str(tuple(t.shape)) for t in (student, teacher, mean, basis))
        return f"shapes {shapes} do not match"
    if student.numel() == 0 or teacher.shape[1] == 0:
        return "empty inputs"
    if student.dtype not in DTYPES or teacher.dtype not in DTYPES:
        return f"dtypes {student.dtype}/{teacher.dtype} (float32 or bfloat16)"
    if not (mean.is_floating_point() and basis.is_floating_point()):
        return "mean and basis must be floating point"
    if _loss_dtype(student, teacher, basis) not in DTYPES:
        return f"basis dtype {basis.dtype}"
    return None


def power_temperature_scale(f: torch.Tensor, T: float = 0.1, n: float = 3) -> torch.Tensor:  # noqa: N803
    """Fused `sign(f)·|f/T|^(1/n)`; the gradient is taken as 0 at f = 0 (the reference gives NaN)."""
    check_pts(T, n)
    return _Pts.apply(f, float(T), float(n))


def kdep_loss(student: torch.Tensor, teacher: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor,
              weight: float = 3.0, T: float = 0.1, n: float = 3) -> torch.Tensor:  # noqa: N803
    """Fused `weight·MSE(student, PTS((teacher − mean) @ basis))` (KDEP §3.2–3.3, one launch forward)."""
    check_pts(T, n)
    if student.dtype != teacher.dtype:  # one kernel dtype
        student, teacher = student.float(), teacher.float()
    return _KdepLoss.apply(student, teacher, mean, basis, float(weight), float(T), float(n))


def _loss_dtype(student: torch.Tensor, teacher: torch.Tensor, basis: torch.Tensor) -> torch.dtype:
    return torch.promote_types(student.dtype, torch.promote_types(teacher.dtype, basis.dtype))


def _grid(launcher, name: str, smem: int, items: int) -> int:
    return max(1, min(launcher.max_blocks(name, smem), items))


class _Pts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: torch.Tensor, T: float, n: float) -> torch.Tensor:  # noqa: N803
        launcher, f = get_launcher(f.device), f.contiguous()
        y = torch.empty_like(f)
        name = f"pts_forward_{DTYPES[f.dtype]}"
        params = PtsParams(x=f.data_ptr(), y=y.data_ptr(), numel=f.numel(), T=T, inv_n=1.0 / n)
        if f.numel():
            launcher.launch(name, _grid(launcher, name, 0, -(-f.numel() // THREADS)), params, 0, False)
        ctx.save_for_backward(f)
        ctx.T, ctx.n = T, n
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (f,) = ctx.saved_tensors
        launcher, grad = get_launcher(f.device), grad.to(f.dtype).contiguous()
        gx = torch.empty_like(f)
        name = f"pts_backward_{DTYPES[f.dtype]}"
        params = PtsParams(x=f.data_ptr(), gy=grad.data_ptr(), gx=gx.data_ptr(), numel=f.numel(), T=ctx.T,
                           inv_n=1.0 / ctx.n)
        if f.numel():
            launcher.launch(name, _grid(launcher, name, 0, -(-f.numel() // THREADS)), params, 0, False)
        return gx, None, None


class _KdepLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, mean, basis, weight: float, T: float, n: float) -> torch.Tensor:  # noqa: N803
        launcher = get_launcher(student.device)
        student = student if student.stride(1) == 1 else student.contiguous()
        teacher = teacher if teacher.stride(1) == 1 else teacher.contiguous()
        mean32, basis32 = mean.float().contiguous(), basis.float().contiguous()
        b, k, dt = student.shape[0], student.shape[1], teacher.shape[1]
        name = f"kdep_forward_{DTYPES[student.dtype]}"
        capacity = launcher.max_blocks(name, SMEM)
        row_tiles, col_tiles = -(-b // TILE), -(-k // TILE)
        tiles = row_tiles * col_tiles
        split = max(1, min(-(-capacity // tiles), -(-dt // CHUNK) // 4))
        saved, kept = workspace(student.device, diff=b * k, loss=1)
        scratch, temp = workspace(student.device, partial=split * tiles * TILE * TILE, loss_part=tiles)
        loss_dtype = _loss_dtype(student, teacher, basis)
        out = torch.empty((), dtype=loss_dtype, device=student.device)
        params = KdepParams(student=student.data_ptr(), teacher=teacher.data_ptr(), mean=mean32.data_ptr(),
                            basis=basis32.data_ptr(), loss_out=out.data_ptr(), barrier=launcher.barrier(),
                            ld_student=student.stride(0), ld_teacher=teacher.stride(0), batch=b, d_teacher=dt,
                            dim=k, row_tiles=row_tiles, col_tiles=col_tiles, split=split,
                            loss_bf16=int(loss_dtype == torch.bfloat16), T=T, inv_n=1.0 / n, weight=weight,
                            **kept, **temp)
        launcher.launch(name, min(capacity, split * tiles), params, SMEM, True)
        del scratch
        ctx.save_for_backward(saved)
        ctx.kept, ctx.shape, ctx.dtype, ctx.loss_dtype, ctx.weight = kept, (b, k), student.dtype, loss_dtype, weight
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (saved,) = ctx.saved_tensors
        launcher, (b, k) = get_launcher(saved.device), ctx.shape
        grad = grad.to(ctx.loss_dtype).contiguous()
        dstudent = torch.empty((b, k), dtype=ctx.dtype, device=saved.device)
        name = f"kdep_backward_{DTYPES[ctx.dtype]}"
        params = KdepParams(grad_out=grad.data_ptr(), dstudent=dstudent.data_ptr(), batch=b, dim=k,
                            loss_bf16=int(ctx.loss_dtype == torch.bfloat16), weight=ctx.weight, **ctx.kept)
        launcher.launch(name, _grid(launcher, name, 0, -(-b * k // THREADS)), params, 0, False)
        return dstudent, None, None, None, None, None, None
