"""HSTU attention: the reference against a naive loop, the cpu path against the reference.

Forward and backward (q, k, v, position_bias, time_bias) on seeded random jagged batches
whose lengths always include 0, 1 and max_seq_len; plus mask invariances (causality,
candidates) and input checks. Triton is tested in test_hstu_attention_triton.py.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from _hstu_cases import (
    LEAVES,
    Case,
    assert_matches,
    check_candidate_invariance,
    check_causality,
    make_inputs,
    random_lengths,
    run,
)

from kernels import hstu_attention, lengths_to_offsets
from kernels.hstu.common import time_buckets
from kernels.hstu.cpu import plan_groups

# ---------------------------------------------------------------------------------------
# An independent check of the reference: one scalar loop per (sequence, head, i, j),
# written from the spec's words rather than from the shared mask helper.
# ---------------------------------------------------------------------------------------


def _naive_allowed(i, j, length, targets, causal, contextual_len):
    first_candidate = length - targets
    if j >= first_candidate:  # candidates are seen by themselves only
        return i == j
    if i >= first_candidate:  # a candidate sees every non-candidate
        return True
    if i < contextual_len or j < contextual_len:
        return True
    return j <= i or not causal


def _naive_hstu(inputs, case):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    n, alpha = case.max_seq_len, inputs["alpha"]
    pb, tb, ts = inputs.get("position_bias"), inputs.get("time_bias"), inputs.get("timestamps")
    rows = []
    start = 0
    for b, length in enumerate(case.lengths):
        targets = case.num_targets[b] if case.num_targets else 0
        if case.normalizer == "number":
            norm = 3.5
        elif case.normalizer == "lengths":
            norm = max(length, 1)
        else:
            norm = n
        for i in range(length):
            acc = torch.zeros(case.heads, case.value_dim, dtype=q.dtype)
            for j in range(length):
                if not _naive_allowed(i, j, length, targets, case.causal, case.contextual_len):
                    continue
                score = alpha * (q[start + i] * k[start + j]).sum(-1)  # (H,)
                if pb is not None:
                    score = score + pb[j - i + n - 1]
                if tb is not None:
                    gap = max(abs(int(ts[start + i]) - int(ts[start + j])), 1)
                    bucket = min(max(math.floor(math.log(gap) / 0.301), 0), tb.numel() - 1)
                    score = score + tb[bucket]
                acc = acc + (F.silu(score) / norm)[:, None] * v[start + j]
            rows.append(acc)
        start += length
    return torch.stack(rows) if rows else v[:0] * 0


NAIVE_CASES = [
    Case((5, 0, 1, 3), 5, heads=2, attn_dim=3, value_dim=2, position_bias=True, time_bias=True),
    Case((4, 6, 1), 6, heads=1, attn_dim=2, value_dim=3, causal=False, position_bias=True),
    Case(
        (6, 2, 5, 0),
        6,
        heads=2,
        attn_dim=3,
        value_dim=2,
        time_bias=True,
        num_targets=(2, 1, 0, 0),
        contextual_len=2,
        normalizer="lengths",
    ),
    Case(
        (6, 4, 3),
        6,
        heads=1,
        attn_dim=2,
        value_dim=2,
        causal=False,
        position_bias=True,
        num_targets=(3, 4, 1),  # a sequence that is all candidates
        contextual_len=1,
        normalizer="number",
    ),
]


@pytest.mark.parametrize("case", NAIVE_CASES)
def test_reference_matches_naive_loop(case):
    inputs = make_inputs(case, torch.float64, seed=0)
    expected_out = _naive_hstu(inputs, case)
    names = [name for name in LEAVES if name in inputs]
    expected_grads = torch.autograd.grad(
        expected_out, [inputs[name] for name in names], inputs["grad_out"].double()
    )
    actual = run("reference", inputs)
    assert torch.allclose(actual["out"], expected_out, atol=1e-12)
    for name, want in zip(names, expected_grads, strict=True):
        assert torch.allclose(actual[name], want, atol=1e-12), name


def test_time_buckets_follow_the_formula():
    gaps = torch.tensor([0, 1, -1, 2, 3, 10, -100, 10**6, 10**12])
    expected = [
        min(max(math.floor(math.log(max(abs(g), 1)) / 0.301), 0), 40) for g in gaps.tolist()
    ]
    assert time_buckets(gaps, 41).tolist() == expected
    assert time_buckets(gaps, 5).max().item() == 4  # clamped to the table


# ---------------------------------------------------------------------------------------
# cpu path against the reference (fp64 reference on the same values as ground truth).
# ---------------------------------------------------------------------------------------


def _cpu_cases():
    g = torch.Generator().manual_seed(1234)
    cases = []
    for heads, attn_dim, value_dim in [(1, 4, 4), (2, 8, 5), (3, 16, 8)]:
        for n in (1, 7, 33):
            lengths = random_lengths(g, 9, n)
            targets = tuple(torch.randint(0, 4, (9,), generator=g).tolist())
            base = Case(lengths, n, heads=heads, attn_dim=attn_dim, value_dim=value_dim)
            cases += [
                base,
                base.with_(causal=False, position_bias=True),
                base.with_(position_bias=True, time_bias=True, normalizer="lengths"),
                base.with_(time_bias=True, num_targets=targets, causal=False),
                base.with_(num_targets=targets, contextual_len=min(3, n), position_bias=True),
                base.with_(contextual_len=min(2, n), causal=False, normalizer="number"),
            ]
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("seed, case", list(enumerate(_cpu_cases())))
def test_cpu_matches_reference(seed, case, dtype):
    inputs = make_inputs(case, dtype, seed=seed)
    expected = run("reference", inputs, dtype=torch.float64)
    assert_matches(run("cpu", inputs), expected, dtype, context=str(case))


def test_cpu_many_groups_and_chunks(monkeypatch):
    """Enough distinct lengths to make several groups, and a chunk cap that splits them."""
    import kernels.hstu.cpu as cpu

    g = torch.Generator().manual_seed(5)
    lengths = (*torch.randint(0, 60, (40,), generator=g).tolist(), 60)
    case = Case(lengths, 60, position_bias=True, time_bias=True, num_targets=None)
    inputs = make_inputs(case, torch.float64, seed=3)
    expected = run("reference", inputs)
    monkeypatch.setattr(cpu, "GROUP_OVERHEAD", 10)
    monkeypatch.setattr(cpu, "MAX_GROUP_ENTRIES", 2 * 60 * 60 * 3)
    assert len(plan_groups(sorted(lengths, reverse=True), 2)) > 5
    assert_matches(run("cpu", inputs), expected, torch.float64)


@pytest.mark.parametrize("contextual_len", [0, 7])
@pytest.mark.parametrize("causal", [True, False])
def test_cpu_query_chunks(monkeypatch, causal, contextual_len):
    """Causal groups split into query chunks that skip the masked upper triangle."""
    import kernels.hstu.cpu as cpu

    monkeypatch.setattr(cpu, "QUERY_CHUNK", 5)  # widths up to 23 -> up to 4 chunks
    assert cpu.query_chunks(20, True, 7) == [(0, 5, 20), (5, 10, 20), (10, 15, 15), (15, 20, 20)]
    g = torch.Generator().manual_seed(11)
    lengths = random_lengths(g, 10, 23)
    case = Case(
        lengths,
        23,
        heads=2,
        attn_dim=6,
        value_dim=4,
        causal=causal,
        position_bias=True,
        time_bias=True,
        num_targets=tuple(torch.randint(0, 4, (10,), generator=g).tolist()),
        contextual_len=contextual_len,
        normalizer="lengths",
    )
    inputs = make_inputs(case, torch.float64, seed=12)
    assert_matches(run("cpu", inputs), run("reference", inputs), torch.float64)


def test_plan_groups_covers_every_sequence_once():
    assert plan_groups([50] * 16, heads=2) == [(0, 16)]
    lengths = sorted(
        torch.randint(1, 200, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    )[::-1]
    groups = sorted(plan_groups(lengths, heads=2))
    assert groups[0][0] == 0 and groups[-1][1] == 128
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))
    assert plan_groups([], heads=1) == []


# ---------------------------------------------------------------------------------------
# Mask invariances, for every PyTorch implementation (triton has its own file).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_changing_a_candidate_leaves_other_candidates_alone(impl):
    check_candidate_invariance(impl)


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_causality_later_tokens_do_not_change_earlier_outputs(impl):
    check_causality(impl)


# ---------------------------------------------------------------------------------------
# Edge cases and the public function.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("lengths", [(), (0,), (0, 0, 0), (1,), (1, 0, 1)])
def test_empty_and_single_token_batches(impl, lengths):
    case = Case(lengths, 4, position_bias=True, time_bias=True)
    inputs = make_inputs(case, torch.float64, seed=0)
    result = run(impl, inputs)
    expected = run("reference", inputs) if impl != "reference" else result
    assert result["out"].shape == (sum(lengths), 2, 8)
    assert_matches(result, expected, torch.float64)
    if sum(lengths):
        # A lone token attends to itself only: out = SiLU(alpha q.k + pb[N - 1] + tb[0]) v / N.
        q, k, v = inputs["q"][0], inputs["k"][0], inputs["v"][0]
        score = (
            inputs["alpha"] * (q * k).sum(-1) + inputs["position_bias"][3] + inputs["time_bias"][0]
        )
        assert torch.allclose(result["out"][0], (F.silu(score) / 4)[:, None] * v)


def test_auto_uses_cpu_path_on_cpu_and_output_keeps_dtype():
    case = Case((3, 5), 5, position_bias=True)
    inputs = make_inputs(case, torch.bfloat16, seed=1)
    auto = run("auto", inputs)
    cpu = run("cpu", inputs)
    assert auto["out"].dtype == torch.bfloat16
    for name in auto:
        assert torch.equal(auto[name], cpu[name])


def test_input_checks():
    q = torch.randn(5, 2, 4)
    offsets = lengths_to_offsets(torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="impl"):
        hstu_attention(q, q, q, offsets, 3, alpha=1.0, impl="cuda")
    for impl in ("reference", "cpu"):
        with pytest.raises(ValueError, match="exceeds max_seq_len"):
            hstu_attention(q, q, q, offsets, 2, alpha=1.0, impl=impl)
        with pytest.raises(ValueError, match="position_bias"):
            hstu_attention(q, q, q, offsets, 3, alpha=1.0, position_bias=torch.zeros(4), impl=impl)
        with pytest.raises(ValueError, match="timestamps"):
            hstu_attention(q, q, q, offsets, 3, alpha=1.0, time_bias=torch.zeros(4), impl=impl)
        with pytest.raises(ValueError, match="num_targets"):
            hstu_attention(q, q, q, offsets, 3, alpha=1.0, num_targets=torch.ones(3), impl=impl)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_strided_views_and_integer_normalizer(impl):
    """q, k, v as column slices of one projection (as a model makes them), lengths as divisor."""
    lengths = torch.tensor([5, 0, 9, 1])
    offsets = lengths_to_offsets(lengths)
    projected = torch.randn(15, 3 * 2 * 4, dtype=torch.float64, requires_grad=True)
    q, k, v = (x.reshape(-1, 2, 4) for x in projected.split([8, 8, 8], dim=-1))
    assert not q.is_contiguous()
    pb = torch.randn(17, dtype=torch.float64, requires_grad=True)
    kwargs = {"alpha": 0.5, "position_bias": pb, "normalizer": lengths.clamp(min=1)}
    out = hstu_attention(q, k, v, offsets, 9, impl=impl, **kwargs)
    grads = torch.autograd.grad(out.sum(), [projected, pb])
    dense = [x.detach().contiguous().requires_grad_() for x in (q, k, v)]
    expected = hstu_attention(*dense, offsets, 9, impl="reference", **kwargs)
    expected_grads = torch.autograd.grad(expected.sum(), [*dense, pb])
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(grads[0], torch.cat([g.reshape(15, 8) for g in expected_grads[:3]], 1))
    assert torch.allclose(grads[1], expected_grads[3])
