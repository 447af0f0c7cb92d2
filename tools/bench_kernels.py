"""Fused CUDA kernels vs eager PyTorch vs torch.compile: AFT kernel distance, forward + backward.

    python tools/bench_kernels.py                      # the issue's grid, into results/kernels.{json,md}
    python tools/bench_kernels.py --batches 128 --teacher-dims 768 --dtypes fp32

Grid: B ∈ {64, 128, 256, 512, 1024}, dφ = 512, dψ ∈ {768, 1536, 3072}, float32 and bfloat16
inputs; the student features and the feature weights need gradients, the teacher features do not
(cached, as in AFT). One step = loss + backward; time per step from CUDA events (median of rounds),
after checking that the fused result matches eager. Needs a CUDA GPU: without one it exits with a
message and writes nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, dump_json, provenance  # noqa: E402

import torch  # noqa: E402

from edgeft import artifacts  # noqa: E402
from edgeft.compress import losses  # noqa: E402
from edgeft.compress.kernels import aft as fused_aft  # noqa: E402

D_PHI = 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # fused vs float32 eager on the same values, relative to the largest


def peak_bandwidth(index: int = 0) -> float:
    """Peak DRAM bandwidth in bytes/s: 2 transfers per memory clock × bus width."""
    from cuda.bindings import driver

    driver.cuInit(0)
    _, device = driver.cuDeviceGet(index)
    attr = driver.CUdevice_attribute
    _, clock_khz = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, device)
    _, bus_bits = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, device)
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


def step_time(step: Callable[[], None], rounds: int, iters: int, warmup: int) -> float:
    """Median milliseconds per call of `step` (GPU time between CUDA events, launch gaps included)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def check_fused(phi: torch.Tensor, psi: torch.Tensor, w: torch.Tensor, fused: tuple, tolerance: float) -> None:
    """Stops the benchmark unless the fused loss and gradients match float32 eager on the same inputs."""
    leaves = phi.detach().float().requires_grad_(), w.detach().requires_grad_()
    loss = losses.kernel_distance(leaves[0], psi.float(), leaves[1])
    loss.backward()
    for name, mine, ref in zip(("loss", "d phi", "d w"), fused, (loss.detach(), leaves[0].grad, leaves[1].grad)):
        error = (mine.float() - ref).abs().max().item()
        if error > tolerance * ref.abs().max().item():
            raise SystemExit(f"fused {name} disagrees with eager for {tuple(phi.shape)}, {tuple(psi.shape)}, "
                             f"{phi.dtype}: max error {error:.3g}")


def measure(batch: int, d_psi: int, dtype_name: str, args: argparse.Namespace) -> dict:
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device="cuda").manual_seed(batch + d_psi)
    phi = torch.randn(batch, D_PHI, device="cuda", generator=g).to(dtype).requires_grad_()
    psi = (torch.randn(batch, d_psi, device="cuda", generator=g) + 0.5).to(dtype)
    w = torch.rand(d_psi, device="cuda", generator=g).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(losses.kernel_distance, dynamic=False)
    paths = {"eager": losses.kernel_distance, "compile": compiled,
             "fused": lambda a, b, c: fused_aft.kernel_distance(a, [b], c)}

    def run(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        phi.grad = w.grad = None
        loss = fn(phi, psi, w)
        loss.backward()
        return loss.detach(), phi.grad, w.grad

    check_fused(phi, psi, w, run(paths["fused"]), TOLERANCE[dtype_name])
    run(paths["compile"])  # compiles outside the timing
    row = {"dtype": dtype_name, "batch": batch, "d_phi": D_PHI, "d_psi": d_psi}
    for name, fn in paths.items():
        row[f"{name}_ms"] = step_time(lambda: run(fn), args.rounds, args.iters, args.warmup)
    size = phi.element_size()
    # compulsory traffic: read phi, psi, w; write d phi, d w
    row["min_bytes"] = batch * (2 * D_PHI + d_psi) * size + 2 * 4 * d_psi
    row["fused_bandwidth_fraction"] = row["min_bytes"] / (row["fused_ms"] * 1e-3) / args.peak
    row["fused_tflops"] = 6 * batch * batch * (D_PHI + d_psi) / (row["fused_ms"] * 1e-3) / 1e12  # reference's count
    row["speedup_vs_eager"] = row["eager_ms"] / row["fused_ms"]
    row["speedup_vs_compile"] = row["compile_ms"] / row["fused_ms"]
    return row


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "# Fused AFT kernel distance: forward + backward per step",
        "",
        f"GPU {report['gpu']} (peak DRAM bandwidth {report['peak_bandwidth_gbs']:.0f} GB/s); dφ = {D_PHI}; "
        "teacher features without gradient, student features and weights with; median of "
        f"{report['rounds']} rounds × {report['iters']} steps after {report['warmup']} warm-up steps. "
        "Bandwidth fraction: compulsory bytes (read φ, ψ, w; write dφ, dw) per fused step time over the peak. "
        "TFLOP/s: the reference's 6·B²·(dφ+dψ) flops per fused step.",
        "",
        "| dtype | dψ | B | eager ms | torch.compile ms | fused ms | × eager | × compile | bandwidth fraction "
        "| TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['d_psi']} | {r['batch']} | {r['eager_ms']:.3f} | {r['compile_ms']:.3f} | "
                     f"{r['fused_ms']:.3f} | {r['speedup_vs_eager']:.2f} | {r['speedup_vs_compile']:.2f} | "
                     f"{r['fused_bandwidth_fraction']:.2%} | {r['fused_tflops']:.2f} |")
    at_128 = [r for r in rows if r["batch"] == 128]
    slower = [f"{r['dtype']} dψ={r['d_psi']} B={r['batch']} ({r['speedup_vs_compile']:.2f}×)"
              for r in rows if r["speedup_vs_compile"] < 1]
    lines += ["", "Targets (issue 8):", ""]
    if at_128:
        worst = min(at_128, key=lambda r: r["speedup_vs_eager"])
        lines.append(f"- fused ≥ 3× eager at B = 128: {'yes' if worst['speedup_vs_eager'] >= 3 else 'no'} "
                     f"(lowest {worst['speedup_vs_eager']:.2f}×, {worst['dtype']} dψ={worst['d_psi']})")
    lines.append("- fused no slower than torch.compile at every size: "
                 + ("yes" if not slower else "no, slower at " + ", ".join(slower)))
    prov = report["provenance"]
    lines += ["", f"Command: `{prov['command']}`; hardware {prov['hardware']}; versions {prov['versions']}; "
              f"commit {prov['commit']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,128,256,512,1024")
    parser.add_argument("--teacher-dims", default="768,1536,3072")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for kernels.json and kernels.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("skipped: no CUDA GPU here; bench_kernels.py times GPU kernels and wrote nothing")
    args.peak = peak_bandwidth(torch.cuda.current_device())
    rows = [measure(b, d, t, args) for t in args.dtypes.split(",") for d in map(int, args.teacher_dims.split(","))
            for b in map(int, args.batches.split(","))]
    report = {"gpu": torch.cuda.get_device_name(), "peak_bandwidth_gbs": args.peak / 1e9, "rounds": args.rounds,
              "iters": args.iters, "warmup": args.warmup, "rows": rows, "provenance": provenance()}
    dump_json(args.out / "kernels.json", report)
    artifacts.write_text(args.out / "kernels.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
