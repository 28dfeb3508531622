"""Triton HSTU attention against the reference, forward and backward.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set here, before Triton is first
imported): exact but slow, so shapes are tiny and blocks are 16 wide; lengths up to 37
still cover several blocks, block skipping and contextual tokens spanning a block edge.
With a GPU the same tests run natively on it, and the `gpu` tests add realistic shapes.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from _hstu_cases import (  # noqa: E402  (the environment must be set first)
    Case,
    assert_matches,
    check_candidate_invariance,
    check_causality,
    make_inputs,
    random_lengths,
    run,
)

from kernels import hstu_attention, lengths_to_offsets  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _triton_cases():
    g = torch.Generator().manual_seed(99)
    lengths = random_lengths(g, 6, 37)
    targets = tuple(torch.randint(0, 5, (6,), generator=g).tolist())
    return [
        Case(lengths, 37, heads=2, attn_dim=8, value_dim=5),
        Case(lengths, 37, heads=1, attn_dim=16, value_dim=16, position_bias=True, time_bias=True),
        Case(
            lengths,
            37,
            heads=2,
            attn_dim=8,
            value_dim=8,
            causal=False,
            position_bias=True,
            num_targets=targets,
            normalizer="lengths",
        ),
        Case(
            lengths,
            37,
            heads=1,
            attn_dim=24,
            value_dim=12,
            time_bias=True,
            num_targets=targets,
            contextual_len=18,  # crosses the first 16-wide block
            normalizer="number",
        ),
        Case(
            random_lengths(g, 4, 20),
            20,
            heads=3,
            attn_dim=4,
            value_dim=4,
            causal=False,
            position_bias=True,
            time_bias=True,
            contextual_len=3,
        ),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("seed, case", list(enumerate(_triton_cases())))
def test_triton_matches_reference(seed, case, dtype):
    inputs = make_inputs(case, dtype, seed=seed, device=DEVICE)
    expected = run("reference", inputs, dtype=torch.float64)
    assert_matches(run("triton", inputs), expected, dtype, context=str(case))


@pytest.mark.parametrize("lengths", [(), (0,), (0, 0), (1,), (1, 0, 1)])
def test_triton_empty_and_single_token_batches(lengths):
    case = Case(lengths, 4, position_bias=True, time_bias=True)
    inputs = make_inputs(case, torch.float32, seed=0, device=DEVICE)
    expected = run("reference", inputs, dtype=torch.float64)
    assert_matches(run("triton", inputs), expected, torch.float32)


def test_triton_candidates_are_invisible_to_each_other():
    check_candidate_invariance("triton", DEVICE, torch.float32)


def test_triton_causality():
    check_causality("triton", DEVICE, torch.float32)


def test_triton_bias_gradients_only_when_asked():
    case = Case((5, 3), 5, position_bias=True, time_bias=True)
    inputs = make_inputs(case, torch.float32, seed=1, device=DEVICE)
    inputs["time_bias"].requires_grad_(False)
    result = run("triton", inputs)
    expected = run("reference", inputs, dtype=torch.float64)
    assert "time_bias" not in result
    assert_matches(result, expected, torch.float32)


# ---------------------------------------------------------------------------------------
# Native GPU only: realistic shapes, and the dispatcher's choice.
# ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_realistic_shapes_match_reference(dtype):
    g = torch.Generator().manual_seed(3)
    case = Case(
        random_lengths(g, 16, 512),
        512,
        heads=4,
        attn_dim=64,
        value_dim=64,
        position_bias=True,
        time_bias=True,
        num_targets=tuple(torch.randint(0, 16, (16,), generator=g).tolist()),
        contextual_len=5,
        normalizer="lengths",
    )
    inputs = make_inputs(case, dtype, seed=0, device="cuda")
    expected = run("reference", inputs, dtype=torch.float64)
    assert_matches(run("triton", inputs), expected, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_auto_dispatches_to_triton():
    case = Case((40, 0, 77), 80, heads=2, attn_dim=32, value_dim=32, position_bias=True)
    inputs = make_inputs(case, torch.bfloat16, seed=0, device="cuda")
    auto, triton_result = run("auto", inputs), run("triton", inputs)
    for name in ("out", "q", "k", "v"):  # no atomics: bit for bit
        assert torch.equal(auto[name], triton_result[name])
    # fp32 atomics add in any order: equal up to rounding.
    assert torch.allclose(auto["position_bias"], triton_result["position_bias"], rtol=1e-5)


def test_triton_strided_views_and_integer_normalizer():
    lengths = torch.tensor([5, 0, 9, 1])
    offsets = lengths_to_offsets(lengths).to(DEVICE)
    projected = torch.randn(15, 3 * 2 * 16, device=DEVICE, requires_grad=True)
    q, k, v = (x.reshape(-1, 2, 16) for x in projected.split([32, 32, 32], dim=-1))
    kwargs = {"alpha": 0.25, "normalizer": lengths.clamp(min=1).to(DEVICE)}
    out = hstu_attention(q, k, v, offsets, 9, impl="triton", **kwargs)
    (grad,) = torch.autograd.grad(out.sum(), [projected])
    expected = hstu_attention(
        q.double(), k.double(), v.double(), offsets, 9, impl="reference", **kwargs
    )
    (expected_grad,) = torch.autograd.grad(expected.sum(), [projected])
    assert_matches(
        {"out": out, "grad": grad}, {"out": expected, "grad": expected_grad}, torch.float32
    )
