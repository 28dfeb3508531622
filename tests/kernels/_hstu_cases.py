"""Random jagged HSTU attention inputs and a forward+backward runner, shared by the kernel tests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from kernels import hstu_attention, lengths_to_offsets

# Largest error allowed, relative to the largest magnitude of the expected tensor. The
# expected values are always the reference evaluated in fp64 on the same (rounded) inputs,
# so these bound the implementation's own rounding: fp32 accumulation for every low dtype,
# plus bf16/fp16 rounding of the weights fed to the second matmul and of the output.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 5e-6,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


@dataclass(frozen=True)
class Case:
    lengths: tuple[int, ...]
    max_seq_len: int
    heads: int = 2
    attn_dim: int = 8
    value_dim: int = 8
    causal: bool = True
    position_bias: bool = False
    time_bias: bool = False
    num_targets: tuple[int, ...] | None = None
    contextual_len: int = 0
    normalizer: str = "default"  # "default" (max_seq_len), "number" or "lengths"
    tags: tuple[str, ...] = field(default=(), compare=False)

    def with_(self, **changes) -> Case:
        return replace(self, **changes)


def random_lengths(generator, batch: int, max_seq_len: int) -> tuple[int, ...]:
    """Random lengths that always include 0, 1 and max_seq_len, in random order."""
    lengths = torch.randint(0, max_seq_len + 1, (batch,), generator=generator)
    lengths[:3] = torch.tensor([0, 1, max_seq_len])[: min(3, batch)]
    return tuple(lengths[torch.randperm(batch, generator=generator)].tolist())


def make_inputs(case: Case, dtype: torch.dtype, seed: int, device="cpu") -> dict:
    """Leaf tensors (requires_grad) and keyword arguments for hstu_attention."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(case.lengths, dtype=torch.int64)
    total, n = int(lengths.sum()), case.max_seq_len

    def leaf(*shape, scale=1.0, dt=dtype):
        x = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dt)
        return x.to(device).requires_grad_()

    inputs = {
        "q": leaf(total, case.heads, case.attn_dim),
        "k": leaf(total, case.heads, case.attn_dim),
        "v": leaf(total, case.heads, case.value_dim),
        "offsets": lengths_to_offsets(lengths).to(device),
        "max_seq_len": n,
        "alpha": 1.0 / math.sqrt(case.attn_dim),
        "causal": case.causal,
        "contextual_len": case.contextual_len,
    }
    # Biases live in the parameter dtype (fp32 for low-precision runs, like a model's params).
    bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if case.position_bias:
        inputs["position_bias"] = leaf(2 * n - 1, scale=0.5, dt=bias_dtype)
    if case.time_bias:
        inputs["time_bias"] = leaf(12, scale=0.5, dt=bias_dtype)
        # Gaps from seconds to years, so that many buckets (and the clamp) are used.
        gaps = torch.exp(torch.rand(total, generator=g, dtype=torch.float64) * 20).long()
        inputs["timestamps"] = torch.cumsum(gaps, 0).to(device)
    if case.num_targets is not None:
        inputs["num_targets"] = torch.tensor(case.num_targets, dtype=torch.int64, device=device)
    if case.normalizer == "number":
        inputs["normalizer"] = 3.5
    elif case.normalizer == "lengths":
        inputs["normalizer"] = lengths.clamp(min=1).to(torch.float32).to(device)
    inputs["grad_out"] = torch.randn(total, case.heads, case.value_dim, generator=g).to(device)
    return inputs


LEAVES = ("q", "k", "v", "position_bias", "time_bias")


def run(impl: str, inputs: dict, dtype: torch.dtype | None = None) -> dict:
    """Output and gradients of every leaf that requires grad, for a fixed upstream gradient.

    With ``dtype`` the float leaves are replaced by fresh leaves of that dtype holding the
    same values: used to run the fp64 reference on exactly the values a low-precision
    implementation saw, with fp64 gradients.
    """
    kwargs = {key: value for key, value in inputs.items() if key != "grad_out"}
    if dtype is not None:
        for name in LEAVES:
            if name in kwargs:
                leaf = kwargs[name]
                kwargs[name] = leaf.detach().to(dtype).requires_grad_(leaf.requires_grad)
    leaves = {
        name: kwargs[name] for name in LEAVES if name in kwargs and kwargs[name].requires_grad
    }
    out = hstu_attention(impl=impl, **kwargs)
    grads = torch.autograd.grad(
        out, list(leaves.values()), inputs["grad_out"].to(out.dtype), allow_unused=True
    )
    result = {"out": out.detach()}
    result.update(
        {
            name: torch.zeros_like(leaf) if grad is None else grad
            for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
        }
    )
    return result


def assert_matches(actual: dict, expected: dict, dtype: torch.dtype, context: str = "") -> None:
    tol = TOLERANCE[dtype]
    for name, want in expected.items():
        got = actual[name].to(torch.float64).cpu()
        want = want.to(torch.float64).cpu()
        assert got.shape == want.shape, f"{context} {name}: shape {got.shape} != {want.shape}"
        if want.numel() == 0:
            continue
        scale = max(want.abs().max().item(), 1e-6)
        error = (got - want).abs().max().item()
        assert error <= tol * scale, (
            f"{context} {name}: max error {error:.3g} > {tol:g} * max |expected| {scale:.3g}"
        )


# Three sequences, candidates at the end of each, two contextual tokens, both biases.
INVARIANCE_CASE = Case(
    (7, 9, 4),
    9,
    position_bias=True,
    time_bias=True,
    num_targets=(3, 2, 4),
    contextual_len=2,
)


def check_candidate_invariance(impl: str, device="cpu", dtype=torch.float64) -> None:
    """Changing one candidate's q/k/v/timestamp changes its own output and nothing else."""
    inputs = make_inputs(INVARIANCE_CASE, dtype, seed=7, device=device)
    before = run(impl, inputs)["out"]
    changed = dict(inputs)
    row = 7 + 9 - 2  # first candidate of sequence 1 (length 9, 2 candidates)
    for name in ("q", "k", "v"):
        tensor = inputs[name].detach().clone()
        tensor[row] += 5.0
        changed[name] = tensor.requires_grad_()
    changed["timestamps"] = inputs["timestamps"].clone()
    changed["timestamps"][row] += 10**7
    after = run(impl, changed)["out"]
    others = torch.ones(before.shape[0], dtype=torch.bool, device=before.device)
    others[row] = False
    assert torch.equal(before[others], after[others])  # nobody else ever looks at a candidate
    assert not torch.allclose(before[row], after[row])


def check_causality(impl: str, device="cpu", dtype=torch.float64) -> None:
    """Changing later tokens leaves every earlier output bit for bit unchanged."""
    case = INVARIANCE_CASE.with_(num_targets=None, contextual_len=0)
    inputs = make_inputs(case, dtype, seed=8, device=device)
    before = run(impl, inputs)["out"]
    changed = dict(inputs)
    position = 5  # in sequence 1, which starts at row 7
    for name in ("q", "k", "v"):
        tensor = inputs[name].detach().clone()
        tensor[7 + position :] += 3.0  # every later token of sequences 1 and 2
        changed[name] = tensor.requires_grad_()
    after = run(impl, changed)["out"]
    assert torch.equal(before[: 7 + position], after[: 7 + position])
    assert not torch.allclose(before[7 + position], after[7 + position])
