"""Fused loss kernels (compress/kernels): they compile (NVRTC, nvcc), their math is right, they
compute the reference's values and gradients (CPU emulator; GPU when there is one), and
`--kernels` picks the path it says."""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeft.compress import losses
from edgeft.compress.kernels import _runtime, aft, check_mode, dispatch, kdep_loss, kernel_distance
from edgeft.errors import ConfigError, EdgeftError
from tests.compress.kernel_emu.emulator import Emulator, build

KERNELS = Path(_runtime.__file__).parent
ENTRY_POINTS = sorted(re.findall(r"^EDGEFT_KERNEL\((\w+),", "\n".join(_runtime.sources().values()), re.M))
ARCHS = (87, 90)  # Jetson Orin, H100
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch):
    monkeypatch.setattr(dispatch, "_ANNOUNCED", set())  # each test sees the path it takes logged


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """max |actual − expected| <= tol · max |expected| (relative to the tensor's scale)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} > {tol:g} × {scale:.3g}"


def aft_inputs(batch: int, d_phi: int, dims: tuple[int, ...], dtype=torch.float32, psi_grad=True, device="cpu"):
    g = torch.Generator().manual_seed(batch * 1000 + d_phi)
    phi = torch.randn(batch, d_phi, generator=g).to(device, dtype).requires_grad_()
    psis = [(torch.randn(batch, d, generator=g) + 0.5).to(device, dtype).requires_grad_(psi_grad) for d in dims]
    s = torch.randn(sum(dims), generator=g).to(device).requires_grad_()
    return phi, psis, s


def reference_and_grads(phi, psis, s, dtype=torch.float64):
    """The reference loss and gradients (phi, s, psis), computed in `dtype` from the same values."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (phi, s, *psis)]
    value = losses.kernel_distance(leaves[0], torch.cat(leaves[2:], 1), torch.sigmoid(leaves[1]))
    value.backward()
    return value.detach(), [t.grad for t in leaves]


def fused_and_grads(phi, psis, s, weights=None):
    value = kernel_distance(phi, psis, torch.sigmoid(s) if weights is None else weights, kernels="cuda")
    value.backward()
    grads = [phi.grad, s.grad, *(p.grad for p in psis)]
    return value.detach(), grads


# ---- compilation ------------------------------------------------------------------------------

def test_every_kernel_the_host_launches_exists():
    launched = {f"{loss}_{way}_{kind}" for kind in aft.DTYPES.values() for loss in ("aft", "kdep", "pts")
                for way in ("forward", "backward")}
    assert launched == set(ENTRY_POINTS)


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_kernel_and_caches_it(arch, tmp_path, monkeypatch):
    try:
        _runtime.supported_archs()
    except _runtime.KernelUnavailable as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("EDGEFT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(_runtime, "_IMAGES", {})
    cubin = _runtime.compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"
    assert all(name.encode() in cubin for name in ENTRY_POINTS)
    assert len(list(tmp_path.glob("edgeft-*.cubin"))) == 1
    monkeypatch.setattr(_runtime, "_IMAGES", {})  # a new process: the disk cache answers, no compile
    monkeypatch.setattr(_runtime, "_compile", lambda *a: pytest.fail("compiled again despite the cache"))
    assert _runtime.compile_kernels(arch) == cubin


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", ["aft.cu", "pts.cu"])
def test_nvcc_compiles_for_orin_and_h100(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    result = subprocess.run(["nvcc", "-std=c++17", "-c", "-Werror", "all-warnings", f"-I{KERNELS}", *gencode,
                             str(KERNELS / source), "-o", str(tmp_path / "kernels.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    if shutil.which("cuobjdump"):
        listing = subprocess.run(["cuobjdump", "--list-elf", str(tmp_path / "kernels.o")],
                                 capture_output=True, text=True)
        assert all(f"sm_{a}" in listing.stdout for a in ARCHS), listing.stdout


def test_newer_gpu_than_nvrtc_gets_ptx(monkeypatch):
    monkeypatch.setattr(_runtime, "supported_archs", lambda: [75, 80, 87, 90])
    assert _runtime.target_arch((8, 7)) == (87, False)
    assert _runtime.target_arch((8, 9)) == (87, True)
    assert _runtime.target_arch((12, 0)) == (90, True)
    with pytest.raises(_runtime.KernelUnavailable, match="sm_70"):
        _runtime.target_arch((7, 0))


# ---- the math the kernels implement, in plain torch ----------------------------------------------

def decomposed_kernel_distance(phi, psi, w):
    """Loss and closed-form gradients (phi, psi, w) through the kernels' decomposition: Gram of the
    centred rows, norms from its diagonal, D, rho_i = sum_j D_ij K_ij, then
    dc_i = ±(p_i (D U)_i − q_i u_i), p = 2g/n, q = 2g rho/|c|, g = 1/(B² L), dx = dc − mean(dc)."""
    b = phi.shape[0]
    sides = []
    for x in (phi, psi * w):
        c = x - x.mean(0)
        gram = c @ c.T
        norm = gram.diagonal().sqrt()
        n = norm + losses.EPS_NORM
        sides.append((c, norm, n, gram / (n[:, None] * n[None, :])))
    d = sides[0][3] - sides[1][3]
    loss = torch.sqrt((d * d).sum() / b**2 + losses.EPS_SQRT)
    g = 1 / (b * b * loss)
    dcs = []
    for sign, (c, norm, n, k) in zip((1, -1), sides):
        u = c / n[:, None]
        rho = (d * k).sum(1)
        dcs.append(sign * ((2 * g / n)[:, None] * (d @ u) - (2 * g * rho / norm)[:, None] * u))
    dphi = dcs[0] - dcs[0].mean(0)
    dt = dcs[1] - dcs[1].mean(0)
    return loss, dphi, dt * w, (dcs[1] * (psi - psi.mean(0))).sum(0)


def test_decomposition_and_its_backward_match_autograd():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(37, 11, dtype=torch.float64, generator=g).requires_grad_()
    psi = (torch.randn(37, 29, dtype=torch.float64, generator=g) + 1).requires_grad_()
    w = torch.rand(29, dtype=torch.float64, generator=g).requires_grad_()
    reference = losses.kernel_distance(phi, psi, w)
    reference.backward()
    loss, dphi, dpsi, dw = decomposed_kernel_distance(phi.detach(), psi.detach(), w.detach())
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=0)
    for mine, theirs in ((dphi, phi.grad), (dpsi, psi.grad), (dw, w.grad)):
        assert_rel(mine, theirs, 1e-10)


# ---- the kernels, run on the CPU by the emulator --------------------------------------------------

@pytest.fixture(scope="module")
def emulator_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    return build(tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def emulated(emulator_lib):
    """CPU tensors go through the real kernels (emulated) for the duration of a test."""
    emulator = Emulator(emulator_lib)
    _runtime.register_launcher("cpu", lambda device: emulator)
    yield emulator
    _runtime.register_launcher("cpu", None)


@pytest.mark.parametrize("batch, d_phi, dims, blocks", [
    (70, 24, (40, 37), 7),        # B not a multiple of the 64-row tile; two teachers; 2 K slices
    (130, 8, (300,), 3),          # dψ ≫ dφ; three row tiles
    (64, 16, (16,), 3),           # exact tiles
    (45, 20, (7, 1, 64, 17), 3),  # column tails of every size; 3 K slices
    (33, 12, (5,) * 9, 2),        # more teachers than one launch takes: concatenated first
])
def test_emulated_kernel_distance_matches_reference(emulated, batch, d_phi, dims, blocks):
    emulated.blocks = blocks  # the grid: fewer blocks than work items exercises the grid-stride loops
    phi, psis, s = aft_inputs(batch, d_phi, dims)
    value, grads = fused_and_grads(phi, psis, s)
    expected, expected_grads = reference_and_grads(phi, psis, s)
    assert_rel(value, expected, 1e-5)
    for mine, theirs in zip(grads, expected_grads):
        assert_rel(mine, theirs, 1e-5)
    cooperative = [name for name, _, together in emulated.launches if together]
    assert cooperative == ["aft_forward_f32", "aft_backward_f32"]  # one launch each way


def test_emulated_kernel_distance_without_teacher_gradients(emulated):
    """Frozen teachers and identity weights: the backward skips the teacher columns entirely."""
    phi, psis, _ = aft_inputs(50, 9, (20, 30), psi_grad=False)
    weights = torch.ones(50)
    value = kernel_distance(phi, psis, weights, kernels="cuda")
    value.backward()
    leaf = phi.detach().double().requires_grad_()
    losses.kernel_distance(leaf, torch.cat(psis, 1).double(), weights.double()).backward()
    assert_rel(phi.grad, leaf.grad, 1e-5)
    assert all(p.grad is None for p in psis)


def test_emulated_kernel_distance_strided_rows_and_single_row(emulated):
    wide = torch.randn(40, 30)
    phi = wide[:, 5:17].requires_grad_()  # rows 30 floats apart: read in place
    psi, w = torch.randn(40, 25), torch.rand(25)
    assert_rel(kernel_distance(phi, psi, w, kernels="cuda"), losses.kernel_distance(phi, psi, w), 1e-5)
    one = kernel_distance(torch.randn(1, 4, requires_grad=True), torch.randn(1, 6), torch.rand(6), kernels="cuda")
    assert one.item() == pytest.approx(1e-4)  # a single row has no kernel: sqrt(0 + 1e-8)


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_emulated_kernel_distance_bf16(emulated, weights_dtype):
    """bf16 inputs are computed in float32: as exact as float32 up to the rounding of the outputs."""
    phi, psis, s = aft_inputs(70, 24, (40, 37), dtype=torch.bfloat16)
    weights = torch.sigmoid(s.detach()).to(weights_dtype).requires_grad_()
    value = kernel_distance(phi, psis, weights, kernels="cuda")
    value.backward()
    leaves = [t.detach().double().requires_grad_() for t in (phi, weights, *psis)]
    expected = losses.kernel_distance(leaves[0], torch.cat(leaves[2:], 1), leaves[1])
    expected.backward()
    assert value.dtype == weights_dtype
    assert_rel(value, expected, 1e-5 if weights_dtype == torch.float32 else 1e-2)
    for mine, theirs in zip([phi.grad, weights.grad, *(p.grad for p in psis)], [t.grad for t in leaves]):
        assert mine.dtype == torch.bfloat16 or mine is weights.grad
        assert_rel(mine, theirs, 1e-2)


def kdep_inputs(batch=70, k=40, dt=150, dtype=torch.float32):
    g = torch.Generator().manual_seed(batch)
    teacher = torch.randn(batch, dt, generator=g).to(dtype)
    mean, basis = losses.svd_align(torch.randn(200, dt, generator=g), k)
    student = torch.randn(batch, k, generator=g).to(dtype).requires_grad_()
    return student, teacher, mean, basis


# PTS's slope is unbounded at 0: a projection within float32 rounding of 0 moves the target by
# ~1e-5 of the gradient's scale (the float32 reference itself is off from float64 by 4e-6 here).
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-5), (torch.bfloat16, 1e-2)])
def test_emulated_kdep_loss_matches_reference(emulated, dtype, tol):
    student, teacher, mean, basis = kdep_inputs(dtype=dtype)
    value = kdep_loss(student, teacher, mean, basis, weight=3.0, kernels="cuda")
    value.backward()
    leaf = student.detach().double().requires_grad_()
    target = losses.power_temperature_scale((teacher.double() - mean.double()) @ basis.double())
    expected = 3.0 * torch.nn.functional.mse_loss(leaf, target)
    expected.backward()
    assert_rel(value, expected, 1e-5)  # the loss is float32: only the inputs were rounded
    assert_rel(student.grad, leaf.grad, tol)
    assert emulated.launches[0] == ("kdep_forward_" + aft.DTYPES[dtype], 3, True)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_emulated_power_temperature_scale(emulated, dtype, tol):
    f = torch.randn(3, 333).to(dtype)
    f[0, :5] = 0
    f.requires_grad_()
    y = dispatch.power_temperature_scale(f, T=0.2, n=2.5, kernels="cuda")
    y.backward(torch.ones_like(y))
    leaf = f.detach().double().requires_grad_()
    expected = losses.power_temperature_scale(leaf, T=0.2, n=2.5)
    expected.sum().backward()
    assert_rel(y, expected, tol)
    nonzero = f.detach() != 0
    assert_rel(f.grad[nonzero], leaf.grad[nonzero], tol)
    assert (f.grad[~nonzero] == 0).all()  # the reference's 0·inf = NaN becomes 0


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_emulated_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """Every global and shared memory access of the odd-shaped cases above, checked by ASan."""
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(libasan).is_file():
        pytest.skip("libasan is not installed")
    lib = build(tmp_path, sanitize=True)
    script = Path(__file__).parent / "kernel_emu" / "sanitized_run.py"
    root = Path(__file__).parents[2]
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, str(script), str(lib)], capture_output=True, text=True, env=env,
                            cwd=root, timeout=300)
    assert result.returncode == 0 and "AddressSanitizer" not in result.stderr, result.stderr[-3000:]
    assert "ok" in result.stdout


# ---- dispatch -------------------------------------------------------------------------------------

def test_auto_runs_the_reference_on_cpu_and_says_so(caplog):
    phi, psis, s = aft_inputs(10, 4, (6, 3))
    with caplog.at_level(logging.INFO, logger="edgeft.compress.kernels.dispatch"):
        value = kernel_distance(phi, psis, torch.sigmoid(s))
    assert torch.equal(value, losses.kernel_distance(phi, torch.cat(psis, 1), torch.sigmoid(s)))
    assert "PyTorch reference (cpu tensors)" in caplog.text


def test_auto_takes_the_fused_path_where_it_runs_and_falls_back_where_not(emulated, caplog):
    phi, psis, s = aft_inputs(10, 4, (6,))
    with caplog.at_level(logging.INFO, logger="edgeft.compress.kernels.dispatch"):
        kernel_distance(phi, psis, torch.sigmoid(s))
        assert emulated.launches and "fused CUDA kernel" in caplog.text
        emulated.launches.clear()
        value = kernel_distance(phi.double(), [psis[0].double()], torch.sigmoid(s).double())
    assert not emulated.launches and value.dtype == torch.float64
    with pytest.raises(EdgeftError, match="--kernels cuda: the fused kernel_distance cannot run: dtypes"):
        kernel_distance(phi.double(), psis, torch.sigmoid(s), kernels="cuda")


def test_kernels_that_cannot_load_fall_back_with_a_warning_or_fail_in_cuda_mode(caplog):
    def broken(device):
        raise _runtime.KernelUnavailable("NVRTC failed (--gpu-architecture=sm_87): simulated")

    _runtime.register_launcher("cpu", broken)
    try:
        phi, psis, s = aft_inputs(10, 4, (6,))
        with caplog.at_level(logging.INFO, logger="edgeft.compress.kernels.dispatch"):
            value = kernel_distance(phi, psis, torch.sigmoid(s))
        assert torch.equal(value, losses.kernel_distance(phi, psis[0], torch.sigmoid(s)))
        assert [r.levelname for r in caplog.records] == ["WARNING"] and "simulated" in caplog.text
        with pytest.raises(EdgeftError, match="--kernels cuda: the fused kernel_distance cannot run: NVRTC failed"):
            kernel_distance(phi, psis, torch.sigmoid(s), kernels="cuda")
    finally:
        _runtime.register_launcher("cpu", None)


def test_a_failed_launch_falls_back_for_good_in_auto_mode(emulator_lib, caplog):
    emulator = Emulator(emulator_lib)

    def failing_launch(*args):
        raise _runtime.KernelUnavailable("launch of aft_forward_f32 failed: CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE")

    emulator.launch = failing_launch
    _runtime.register_launcher("cpu", lambda device: emulator)
    try:
        phi, psis, s = aft_inputs(10, 4, (6,))
        with pytest.raises(EdgeftError, match="--kernels cuda: the fused kernel_distance failed: launch of"):
            kernel_distance(phi, psis, torch.sigmoid(s), kernels="cuda")
        with caplog.at_level(logging.WARNING, logger="edgeft.compress.kernels.dispatch"):
            value = kernel_distance(phi, psis, torch.sigmoid(s))
        assert torch.equal(value, losses.kernel_distance(phi, psis[0], torch.sigmoid(s)))
        assert "COOPERATIVE_LAUNCH_TOO_LARGE" in caplog.text
        with pytest.raises(_runtime.KernelUnavailable):  # no second try on this device
            _runtime.get_launcher(torch.device("cpu"))
    finally:
        _runtime.register_launcher("cpu", None)


def test_torch_mode_never_launches(emulated):
    phi, psis, s = aft_inputs(10, 4, (6,))
    kernel_distance(phi, psis, torch.sigmoid(s), kernels="torch")
    assert not emulated.launches


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_mode_without_gpu_is_a_one_line_error():
    with pytest.raises(EdgeftError, match="no CUDA GPU") as info:
        check_mode("cuda")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    phi, psis, s = aft_inputs(10, 4, (6,))
    with pytest.raises(EdgeftError, match="no CUDA GPU"):
        kernel_distance(phi, psis, torch.sigmoid(s), kernels="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_benchmark_without_gpu_says_so_and_writes_nothing(tmp_path):
    tool = Path(__file__).parents[2] / "tools" / "bench_kernels.py"
    result = subprocess.run([sys.executable, str(tool), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "no CUDA GPU" in result.stderr
    assert not list(tmp_path.iterdir())


def test_benchmark_table_states_the_targets():
    """The report of a (made-up) run: the acceptance lines follow from the rows."""
    tool = Path(__file__).parents[2] / "tools" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", tool)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"dtype": "fp32", "d_psi": 768, "eager_ms": 0.9, "compile_ms": 0.3, "fused_ms": 0.2,
           "speedup_vs_eager": 4.5, "speedup_vs_compile": 1.5, "fused_bandwidth_fraction": 0.01, "fused_tflops": 0.5}
    rows = [dict(row, batch=128), dict(row, batch=1024, compile_ms=0.1, speedup_vs_compile=0.5)]
    text = bench.markdown({"gpu": "test", "peak_bandwidth_gbs": 3350.0, "rounds": 1, "iters": 1, "warmup": 0,
                           "rows": rows, "provenance": {"command": "x", "hardware": {}, "versions": {}, "commit": ""}})
    assert "| fp32 | 768 | 128 | 0.900 | 0.300 | 0.200 | 4.50 | 1.50 | 1.00% | 0.50 |" in text
    assert "fused ≥ 3× eager at B = 128: yes (lowest 4.50×" in text
    assert "no slower than torch.compile at every size: no, slower at fp32 dψ=768 B=1024 (0.50×)" in text


def test_unknown_mode_names_the_flag():
    assert check_mode("auto") == "auto" and check_mode("torch") == "torch"
    with pytest.raises(ConfigError, match="--kernels gpu: expected one of auto, cuda, torch"):
        check_mode("gpu")


# ---- on a GPU -------------------------------------------------------------------------------------

@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch, d_phi, dims, dtype, tol", [
    (128, 512, (768,), torch.float32, 1e-5),
    (200, 512, (768, 1536, 768), torch.float32, 1e-5),  # several teachers, B not a multiple of 64
    (1000, 64, (3072,), torch.float32, 1e-5),           # dψ ≫ dφ, many tile pairs
    (37, 512, (3072,), torch.float32, 1e-5),
    (300, 512, (1536, 768), torch.bfloat16, 2e-2),      # bf16 in, gradients rounded to bf16
])
def test_gpu_kernel_distance_matches_reference(batch, d_phi, dims, dtype, tol):
    phi, psis, s = aft_inputs(batch, d_phi, dims, dtype=dtype, device="cuda")
    stream = torch.cuda.Stream()  # not the default stream: launches must follow PyTorch's current one
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        value, grads = fused_and_grads(phi, psis, s)
    torch.cuda.current_stream().wait_stream(stream)
    expected, expected_grads = reference_and_grads(phi, psis, s, dtype=torch.float32)
    assert_rel(value, expected, 1e-5)
    for mine, theirs in zip(grads, expected_grads):
        assert_rel(mine, theirs, tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-5), (torch.bfloat16, 2e-2)])  # 5e-5: see the emulated test
def test_gpu_kdep_and_pts_match_reference(dtype, tol):
    student, teacher, mean, basis = (t.cuda() for t in kdep_inputs(batch=256, k=512, dt=2048, dtype=dtype))
    student = student.detach().requires_grad_()
    value = kdep_loss(student, teacher, mean, basis, kernels="cuda")
    value.backward()
    leaf = student.detach().float().requires_grad_()
    expected = 3.0 * torch.nn.functional.mse_loss(
        leaf, losses.power_temperature_scale((teacher.float() - mean) @ basis))
    expected.backward()
    assert_rel(value, expected, 1e-5 if dtype == torch.float32 else 1e-3)
    assert_rel(student.grad, leaf.grad, tol)
    f = torch.randn(64, 512, device="cuda").to(dtype)
    assert_rel(dispatch.power_temperature_scale(f, kernels="cuda"), losses.power_temperature_scale(f.float()), tol)


@pytest.mark.gpu
@gpu
def test_gpu_auto_uses_the_fused_kernels(caplog):
    phi, psis, s = aft_inputs(64, 32, (48,), device="cuda")
    with caplog.at_level(logging.INFO, logger="edgeft.compress.kernels.dispatch"):
        kernel_distance(phi, psis, torch.sigmoid(s))
    assert "fused CUDA kernel" in caplog.text
