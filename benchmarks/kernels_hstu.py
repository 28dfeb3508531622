"""Benchmark HSTU jagged attention: reference vs cpu on CPU; triton vs reference vs SDPA on CUDA.

    python benchmarks/kernels_hstu.py                 # every part the machine can run
    python benchmarks/kernels_hstu.py --part cpu      # CPU only
    python benchmarks/kernels_hstu.py --part cuda --dtype bfloat16

All implementations of one row are measured side by side in one process, on the same
inputs: --warmup calls each, then --repeats rounds that time each implementation in turn
(so all see the same machine load), reporting the median; for the forward alone ("fwd")
and for forward + backward of every input ("fwd+bwd").

TFLOP/s counts the same useful work for every column: 2 * H * (D + Dv) multiply-adds
per allowed (query, key) pair of the jagged batch for the forward, 3.5 times that for
forward + backward (the usual flash-attention convention: backward = 2.5 x forward).
Padded implementations do more arithmetic than that; the figure is effective throughput.
Speed-ups are the other column's time over this row's ("-" where it was not measured: the
reference is skipped where its (B, H, N, N) tensors would exceed --memory-gib).

The SDPA column is padded softmax attention (torch.nn.functional.scaled_dot_product_attention
pinned to the FlashAttention backend, causal, bf16/fp16) on the same (B, H, N, D) shapes:
a different function, shown as the speed of a tuned dense kernel on the padded batch.

Prints a markdown table headed by the device, date, torch/triton versions and git commit.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from kernels import hstu_attention, lengths_to_offsets
from kernels.hstu import triton_available

# ---------------------------------------------------------------------------------------
# Workloads.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str  # length distribution: "uniform", "heavy" or "equal"
    batch: int
    max_len: int
    heads: int
    dim: int
    biases: bool = True  # position + time bias, as in HSTU


def sample_lengths(workload: Workload, generator: torch.Generator) -> torch.Tensor:
    n, b = workload.max_len, workload.batch
    if workload.name == "uniform":  # uniform on 1..N
        return torch.randint(1, n + 1, (b,), generator=generator)
    if workload.name == "heavy":
        # Pareto(shape 1.2) from N/64 up, capped at N: most users short, a few at the cap.
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        lengths = (max(8, n // 64) * (1 - u) ** (-1 / 1.2)).ceil().long()
        lengths = lengths.clamp(1, n)
        lengths[0] = n  # the batch's padded width is N, as a real batch would be
        return lengths
    return torch.full((b,), n)  # "equal": the worst case for length grouping


def make_inputs(workload: Workload, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = sample_lengths(workload, g)
    total, h, d, n = int(lengths.sum()), workload.heads, workload.dim, workload.max_len

    def leaf(*shape, scale=1.0, leaf_dtype=dtype):
        x = torch.randn(*shape, generator=g) * scale
        return x.to(device, leaf_dtype).requires_grad_()

    inputs = {
        "q": leaf(total, h, d),
        "k": leaf(total, h, d),
        "v": leaf(total, h, d),
        "offsets": lengths_to_offsets(lengths).to(device),
        "max_seq_len": n,
        "alpha": 1.0 / math.sqrt(d),
        "normalizer": lengths.clamp(min=1).float().to(device),
    }
    if workload.biases:
        # Bias tables are fp32 parameters whatever the activation dtype, as in a model.
        inputs["position_bias"] = leaf(2 * n - 1, scale=0.1, leaf_dtype=torch.float32)
        inputs["time_bias"] = leaf(128, scale=0.1, leaf_dtype=torch.float32)
        gaps = torch.exp(torch.rand(total, generator=g) * 12).long()
        inputs["timestamps"] = torch.cumsum(gaps, 0).to(device)
    return inputs, lengths


def useful_flops(workload: Workload, lengths: torch.Tensor, backward: bool) -> float:
    pairs = float((lengths * (lengths + 1) // 2).sum())  # causal pairs of the jagged batch
    fwd = 2.0 * pairs * workload.heads * (2 * workload.dim)
    return fwd * (3.5 if backward else 1.0)


# ---------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(steps: dict, device, warmup: int, repeats: int) -> dict:
    """Median milliseconds of each step, timed in rotation so that all see the same load."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def hstu_step(impl: str, inputs: dict, backward: bool):
    leaves = [inputs[k] for k in ("q", "k", "v", "position_bias", "time_bias") if k in inputs]

    def step():
        for leaf in leaves:
            leaf.grad = None
        out = hstu_attention(impl=impl, **inputs)
        if backward:
            out.backward(torch.ones_like(out))

    return step


def sdpa_step(inputs: dict, lengths: torch.Tensor, backward: bool):
    """Padded causal softmax attention (FlashAttention backend) on the same shapes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels import jagged_to_padded

    n = inputs["max_seq_len"]
    padded = [
        jagged_to_padded(inputs[k].detach(), inputs["offsets"], n)
        .transpose(1, 2)
        .contiguous()
        .requires_grad_()
        for k in ("q", "k", "v")
    ]

    def step():
        for x in padded:
            x.grad = None
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(*padded, is_causal=True)
        if backward:
            out.backward(torch.ones_like(out))

    return step


def reference_fits(workload: Workload, device: str, budget_gib: float) -> bool:
    # The reference materialises about six fp32 (B, H, N, N) tensors with their gradients.
    entries = workload.batch * workload.heads * workload.max_len**2
    return 6 * 4 * entries / 2**30 <= budget_gib


# ---------------------------------------------------------------------------------------
# Parts.
# ---------------------------------------------------------------------------------------

CPU_WORKLOADS = [
    Workload("uniform", 128, 200, 2, 64),
    Workload("uniform", 128, 200, 1, 50, biases=False),
    Workload("heavy", 64, 512, 2, 64),
    Workload("equal", 128, 200, 2, 64),
]


def cuda_workloads(tokens: int) -> list[Workload]:
    """Lengths 256..8192, batch sized for about `tokens` tokens per batch (at least 1)."""
    out = []
    for n in (256, 512, 1024, 2048, 4096, 8192):
        for name, mean in (("uniform", (n + 1) / 2), ("heavy", None)):
            if mean is None:  # mean of the capped Pareto above, estimated by sampling
                g = torch.Generator().manual_seed(1)
                mean = float(sample_lengths(Workload(name, 4096, n, 1, 1), g).float().mean())
            out.append(Workload(name, max(1, int(tokens / mean)), n, heads=4, dim=64))
    return out


def run_rows(workloads, impls, device, dtype, args) -> list[dict]:
    rows = []
    for workload in workloads:
        inputs, lengths = make_inputs(workload, dtype, device)
        for backward in (False, True):
            steps = {}
            for impl in impls:
                if impl == "reference" and not reference_fits(workload, device, args.memory_gib):
                    continue
                if impl == "sdpa":
                    steps[impl] = sdpa_step(inputs, lengths, backward)
                else:
                    steps[impl] = hstu_step(impl, inputs, backward)
            times = median_ms(steps, device, args.warmup, args.repeats)
            del steps
            if device == "cuda":
                torch.cuda.empty_cache()
            flops = useful_flops(workload, lengths, backward)
            for impl, ms in times.items():
                rows.append(
                    {
                        "workload": workload,
                        "tokens": int(lengths.sum()),
                        "pass": "fwd+bwd" if backward else "fwd",
                        "impl": impl,
                        "ms": ms,
                        "vs_reference": times.get("reference", float("nan")) / ms,
                        "vs_sdpa": times.get("sdpa", float("nan")) / ms,
                        "tflops": flops / ms / 1e9,
                    }
                )
            print(
                f"  {workload.name:7} N={workload.max_len:5} B={workload.batch:4} "
                f"{'fwd+bwd' if backward else 'fwd':7} "
                + "  ".join(f"{impl} {ms:.2f} ms" for impl, ms in times.items()),
                file=sys.stderr,
            )
    return rows


def markdown(rows: list[dict]) -> str:
    ratio_keys = ["vs_reference"]
    if any(r["impl"] == "sdpa" for r in rows):
        ratio_keys.append("vs_sdpa")
    titles = {"vs_reference": "speed-up vs reference", "vs_sdpa": "speed-up vs sdpa"}
    lines = [
        "| lengths | max len | batch | tokens | H x D | biases | pass | impl | ms | "
        + " | ".join(titles[key] for key in ratio_keys)
        + " | TFLOP/s |",
        "|---|---:|---:|---:|---|---|---|---|---:|" + "---:|" * len(ratio_keys) + "---:|",
    ]
    for r in rows:
        w = r["workload"]
        ratios = " | ".join("-" if math.isnan(r[key]) else f"{r[key]:.2f}x" for key in ratio_keys)
        lines.append(
            f"| {w.name} | {w.max_len} | {w.batch} | {r['tokens']} | {w.heads} x {w.dim} | "
            f"{'pos+time' if w.biases else 'none'} | {r['pass']} | {r['impl']} | "
            f"{r['ms']:.2f} | {ratios} | {r['tflops']:.3g} |"
        )
    return "\n".join(lines)


def header(device: str, dtype) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        omp = ", ".join(
            f"{key}={os.environ.get(key, 'unset')}"
            for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
        )
        name = (
            f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()} ({omp}), load average at the end {load}"
        )
    versions = f"torch {torch.__version__}"
    if triton_available():
        import triton

        versions += f", triton {triton.__version__}"
    return (
        f"- device: {name}\n- date: {datetime.datetime.now().isoformat(timespec='minutes')}\n"
        f"- {versions}\n- git commit: {commit}\n- dtype: {dtype}\n"
        f"- command: `python {' '.join(sys.argv)}`"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per batch (CUDA part)")
    parser.add_argument("--memory-gib", type=float, default=40.0, help="skip reference above this")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU part")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    parts = []
    if args.part in ("auto", "cpu"):
        parts.append("cpu")
    if args.part == "cuda" or (args.part == "auto" and torch.cuda.is_available()):
        parts.append("cuda")
    sections = []
    for part in parts:
        torch.manual_seed(0)
        if part == "cpu":
            dtype = getattr(torch, args.dtype or "float32")
            rows = run_rows(CPU_WORKLOADS, ["reference", "cpu"], "cpu", dtype, args)
        else:
            dtype = getattr(torch, args.dtype or "bfloat16")
            # FlashAttention takes only 16-bit inputs.
            impls = ["triton", "reference"] + (["sdpa"] if dtype != torch.float32 else [])
            rows = run_rows(cuda_workloads(args.tokens), impls, "cuda", dtype, args)
        sections.append(
            f"### HSTU attention, {part}\n\n{header(part, dtype)}\n\n{markdown(rows)}\n"
        )
    text = "\n".join(sections)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
