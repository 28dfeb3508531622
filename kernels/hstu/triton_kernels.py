"""HSTU attention as fused Triton kernels on jagged rows: forward, dK/dV, dQ.

Flash-attention structure without the softmax: each program owns one block of one
sequence and one head, streams the other side's blocks through on-chip memory, and never
materialises the (L, L) scores, the bias matrix or a padded copy of the inputs.

- forward      grid (batch * heads, query blocks): out_i = sum_j w_ij v_j / n
- dK/dV        grid (batch * heads, key blocks): dv_j = sum_i w_ij do_i, dk_j = alpha sum_i ds_ij q_i;
               also adds ds into the position/time bias gradients with atomics (fp32)
- dQ           grid (batch * heads, query blocks): dq_i = alpha sum_j ds_ij k_j
  where s = alpha q k^T + rab, w = SiLU(s) * mask, ds = (do v^T) * mask * SiLU'(s) / n.
  dQ is its own kernel rather than atomics from the dK/dV pass: deterministic, and the
  cost is one more q k^T per block pair.

Blocks that the mask leaves empty are skipped, not just masked: a causal query block stops
at its diagonal, and a causal key block starts at its diagonal. Contextual tokens break
that pattern (they see, and are seen by, every non-candidate), so the blocks that hold
them are visited in a separate first loop.

Bias terms are recomputed per block from positions and timestamps: position_bias is read
at j - i + N - 1, time_bias at the fp32 log-bucket of |ts_i - ts_j| (the same expression as
common.time_buckets). Products run in the input dtype (bf16/fp16 on the tensor cores, fp32
as IEEE fp32 unless torch allows TF32 for matmuls); everything else accumulates in fp32.

Import this module only where Triton is installed; on a CPU-only machine the kernels run
under TRITON_INTERPRET=1, which must be set before this module is first imported.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import (
    TIME_BUCKET_DIVISOR,
    check_inputs,
    check_lengths,
    normalizer_per_sequence,
    targets_per_sequence,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Globals read inside @triton.jit functions must be constexpr.
_TIME_DIVISOR = tl.constexpr(TIME_BUCKET_DIVISOR)

# ---------------------------------------------------------------------------------------
# Shared pieces (inlined into each kernel).
# ---------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the Triton interpreter (3.9) returns garbage for bf16 tl.dot, so under
    # TRITON_INTERPRET bf16 operands are widened first. Exact either way: bf16 products
    # are representable in fp32, and the GPU accumulates them in fp32 too.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _position_index(offs_m, offs_n, max_seq_len):
    # Clamped so that a sequence longer than max_seq_len cannot read out of bounds.
    index = offs_n[None, :] - offs_m[:, None] + max_seq_len - 1
    return tl.minimum(tl.maximum(index, 0), 2 * max_seq_len - 2)


@triton.jit
def _time_bucket(ts_m, ts_n, num_buckets):
    gap = tl.abs(ts_m[:, None] - ts_n[None, :]).to(tl.float32)
    bucket = (tl.log(tl.maximum(gap, 1.0)) / _TIME_DIVISOR).to(tl.int32)  # >= 0: trunc = floor
    return tl.minimum(bucket, num_buckets - 1)


@triton.jit
def _add_bias(
    s,
    offs_m,
    offs_n,
    ts_m,
    ts_n,
    PB,
    TB,
    max_seq_len,
    num_buckets,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
):
    # Added one term at a time, in this order, to keep the rounding of the fp32 scores.
    if HAS_PB:
        s += tl.load(PB + _position_index(offs_m, offs_n, max_seq_len)).to(tl.float32)
    if HAS_TB:
        s += tl.load(TB + _time_bucket(ts_m, ts_n, num_buckets)).to(tl.float32)
    return s


@triton.jit
def _mask(offs_m, offs_n, length, first_candidate, contextual_len, CAUSAL: tl.constexpr):
    """Which (query, key) pairs attend; the rule is common.allowed_mask's."""
    i = offs_m[:, None]
    j = offs_n[None, :]
    valid = (i < length) & (j < length)
    context = (i < contextual_len) | (j < contextual_len)
    seen = j < first_candidate  # nobody but itself sees a candidate
    if CAUSAL:
        seen = seen & ((j <= i) | context)
    return valid & ((i == j) | seen)


@triton.jit
def _score_grad(do, v, s, sig, allowed, inv_norm, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # ds for w = SiLU(s) * mask / n, with d SiLU(s) / ds = sig * (1 + s * (1 - sig)).
    dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
    return tl.where(allowed, dp * sig * (1.0 + s * (1.0 - sig)) * inv_norm, 0.0)


@triton.jit
def _sequence(offsets, targets, pid_bh, heads):
    b = pid_bh // heads
    start = tl.load(offsets + b)
    length = (tl.load(offsets + b + 1) - start).to(tl.int32)
    first_candidate = length - tl.load(targets + b).to(tl.int32)
    return b, pid_bh % heads, start, length, first_candidate


@triton.jit
def _tile(P, start, h, rows, stride_t, stride_h, length, width, BLOCK: tl.constexpr):
    # Pointers to one head's rows of a jagged (total, heads, width) tensor, BLOCK columns
    # wide, and the mask of those inside the sequence and inside width.
    cols = tl.arange(0, BLOCK)
    mask = (rows < length)[:, None] & (cols[None, :] < width)
    return P + (start + rows)[:, None] * stride_t + h * stride_h + cols[None, :], mask


@triton.jit
def _load_tile(P, start, h, rows, stride_t, stride_h, length, width, BLOCK: tl.constexpr):
    ptrs, mask = _tile(P, start, h, rows, stride_t, stride_h, length, width, BLOCK)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store_tile(P, x, start, h, rows, stride_t, stride_h, length, width, BLOCK: tl.constexpr):
    ptrs, mask = _tile(P, start, h, rows, stride_t, stride_h, length, width, BLOCK)
    tl.store(ptrs, x.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _load_ts(TS, start, rows, length, HAS_TB: tl.constexpr):
    # Without a time bias the row indices stand in: a placeholder that is never read.
    ts = rows
    if HAS_TB:
        ts = tl.load(TS + start + rows, mask=rows < length, other=0)
    return ts


@triton.jit
def _key_end(start_m, length, contextual_len, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    # Causal: keys past the block's last query are never seen, unless the block holds
    # contextual queries (they see every non-candidate).
    end_n = length
    if CAUSAL:
        end_n = tl.where(start_m >= contextual_len, tl.minimum(start_m + BLOCK_M, length), length)
    # Blocks past the end of a short sequence do nothing: zero iterations, masked stores
    # (a loop bound rather than an early return, which keeps to what every Triton compiles).
    return tl.where(start_m < length, end_n, 0)


# ---------------------------------------------------------------------------------------
# Forward.
# ---------------------------------------------------------------------------------------


@triton.jit
def _hstu_fwd(
    Q,
    K,
    V,
    Out,
    offsets,
    targets,
    norm,
    TS,
    PB,
    TB,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    heads,
    attn_dim,
    value_dim,
    alpha,
    max_seq_len,
    contextual_len,
    num_buckets,
    CAUSAL: tl.constexpr,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b, h, start, length, first_candidate = _sequence(offsets, targets, pid_bh, heads)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, start, h, offs_m, stride_qt, stride_qh, length, attn_dim, BLOCK_D)
    ts_m = _load_ts(TS, start, offs_m, length, HAS_TB)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    for start_n in range(0, _key_end(start_m, length, contextual_len, CAUSAL, BLOCK_M), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, start, h, offs_n, stride_kt, stride_kh, length, attn_dim, BLOCK_D)
        v = _load_tile(V, start, h, offs_n, stride_vt, stride_vh, length, value_dim, BLOCK_DV)
        ts_n = _load_ts(TS, start, offs_n, length, HAS_TB)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * alpha
        s = _add_bias(
            s, offs_m, offs_n, ts_m, ts_n, PB, TB, max_seq_len, num_buckets, HAS_PB, HAS_TB
        )
        allowed = _mask(offs_m, offs_n, length, first_candidate, contextual_len, CAUSAL)
        w = tl.where(allowed, s * tl.sigmoid(s), 0.0)
        acc += _dot(w.to(v.dtype), v, PRECISION, UPCAST)
    acc = acc / tl.load(norm + b)
    _store_tile(Out, acc, start, h, offs_m, stride_ot, stride_oh, length, value_dim, BLOCK_DV)


# ---------------------------------------------------------------------------------------
# Backward: dK, dV (and bias gradients) per key block.
# ---------------------------------------------------------------------------------------


@triton.jit
def _hstu_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    offsets,
    targets,
    norm,
    TS,
    PB,
    TB,
    DPB,
    DTB,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    heads,
    attn_dim,
    value_dim,
    alpha,
    max_seq_len,
    contextual_len,
    num_buckets,
    CAUSAL: tl.constexpr,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
    GRAD_PB: tl.constexpr,
    GRAD_TB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_n = tl.program_id(1) * BLOCK_N
    b, h, start, length, first_candidate = _sequence(offsets, targets, pid_bh, heads)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K, start, h, offs_n, stride_kt, stride_kh, length, attn_dim, BLOCK_D)
    v = _load_tile(V, start, h, offs_n, stride_vt, stride_vh, length, value_dim, BLOCK_DV)
    ts_n = _load_ts(TS, start, offs_n, length, HAS_TB)
    inv_norm = 1.0 / tl.load(norm + b)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    # Which query blocks see these keys: causal -> queries from the diagonal on, plus the
    # blocks of contextual queries (loop 0), which see every non-candidate key.
    context_end = 0
    begin_m = 0
    if CAUSAL:
        context_end = tl.cdiv(contextual_len, BLOCK_M) * BLOCK_M
        # Contextual keys are seen by every query.
        begin_m = tl.where(
            start_n < contextual_len,
            context_end,
            tl.maximum(context_end, (start_n // BLOCK_M) * BLOCK_M),
        )
    # Key blocks past the end of a short sequence do nothing (see _key_end).
    stop_m = tl.where(start_n < length, length, 0)
    # Two loops over query blocks, unrolled at compile time so that the body is written once.
    for loop in tl.static_range(2):
        if loop == 0:
            lo = 0
            hi = tl.minimum(context_end, stop_m)
        else:
            lo = begin_m
            hi = stop_m
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = _load_tile(Q, start, h, offs_m, stride_qt, stride_qh, length, attn_dim, BLOCK_D)
            do = _load_tile(
                DO, start, h, offs_m, stride_dot, stride_doh, length, value_dim, BLOCK_DV
            )
            ts_m = _load_ts(TS, start, offs_m, length, HAS_TB)
            s = _dot(q, tl.trans(k), PRECISION, UPCAST) * alpha
            s = _add_bias(
                s, offs_m, offs_n, ts_m, ts_n, PB, TB, max_seq_len, num_buckets, HAS_PB, HAS_TB
            )
            allowed = _mask(offs_m, offs_n, length, first_candidate, contextual_len, CAUSAL)
            sig = tl.sigmoid(s)
            w = tl.where(allowed, s * sig * inv_norm, 0.0)
            dv += _dot(tl.trans(w.to(do.dtype)), do, PRECISION, UPCAST)
            ds = _score_grad(do, v, s, sig, allowed, inv_norm, PRECISION, UPCAST)
            dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST) * alpha
            # Bias gradients: every allowed pair adds its ds to one table entry. Relaxed
            # atomics: only the final sums are read, after the kernel, so no ordering is needed.
            if GRAD_PB:
                pos = _position_index(offs_m, offs_n, max_seq_len)
                tl.atomic_add(DPB + pos, ds, mask=allowed, sem="relaxed")
            if GRAD_TB:
                bucket = _time_bucket(ts_m, ts_n, num_buckets)
                tl.atomic_add(DTB + bucket, ds, mask=allowed, sem="relaxed")
    # dK/dV have k/v's row layout (contiguous (total, H, D) buffers made by the wrapper).
    _store_tile(DK, dk, start, h, offs_n, stride_kt, stride_kh, length, attn_dim, BLOCK_D)
    _store_tile(DV, dv, start, h, offs_n, stride_vt, stride_vh, length, value_dim, BLOCK_DV)


# ---------------------------------------------------------------------------------------
# Backward: dQ per query block (same key range as the forward).
# ---------------------------------------------------------------------------------------


@triton.jit
def _hstu_bwd_dq(
    Q,
    K,
    V,
    DO,
    DQ,
    offsets,
    targets,
    norm,
    TS,
    PB,
    TB,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    heads,
    attn_dim,
    value_dim,
    alpha,
    max_seq_len,
    contextual_len,
    num_buckets,
    CAUSAL: tl.constexpr,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b, h, start, length, first_candidate = _sequence(offsets, targets, pid_bh, heads)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, start, h, offs_m, stride_qt, stride_qh, length, attn_dim, BLOCK_D)
    do = _load_tile(DO, start, h, offs_m, stride_dot, stride_doh, length, value_dim, BLOCK_DV)
    ts_m = _load_ts(TS, start, offs_m, length, HAS_TB)
    inv_norm = 1.0 / tl.load(norm + b)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, _key_end(start_m, length, contextual_len, CAUSAL, BLOCK_M), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, start, h, offs_n, stride_kt, stride_kh, length, attn_dim, BLOCK_D)
        v = _load_tile(V, start, h, offs_n, stride_vt, stride_vh, length, value_dim, BLOCK_DV)
        ts_n = _load_ts(TS, start, offs_n, length, HAS_TB)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * alpha
        s = _add_bias(
            s, offs_m, offs_n, ts_m, ts_n, PB, TB, max_seq_len, num_buckets, HAS_PB, HAS_TB
        )
        allowed = _mask(offs_m, offs_n, length, first_candidate, contextual_len, CAUSAL)
        ds = _score_grad(do, v, s, tl.sigmoid(s), allowed, inv_norm, PRECISION, UPCAST)
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST) * alpha
    _store_tile(DQ, dq, start, h, offs_m, stride_qt, stride_qh, length, attn_dim, BLOCK_D)


# ---------------------------------------------------------------------------------------
# Launch and autograd.
# ---------------------------------------------------------------------------------------


def _block_sizes(attn_dim: int, value_dim: int) -> dict:
    # tl.dot needs every dimension >= 16. Under the interpreter each program is numpy code,
    # so small blocks keep tests fast; on a GPU 64 x 64 fits registers for head dims <= 128.
    # Not autotuned: the benchmark sizes are the ones measured.
    block_d = max(16, triton.next_power_of_2(attn_dim))
    block_dv = max(16, triton.next_power_of_2(value_dim))
    block = 16 if INTERPRET else (64 if max(block_d, block_dv) <= 128 else 32)
    return {"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": block_d, "BLOCK_DV": block_dv}


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE products unless the user let torch use TF32 for matmuls too.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored by Triton for bf16/fp16 inputs


class _HSTUTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, position_bias, time_bias, offsets, timestamps, targets, norm, meta):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        total, heads, attn_dim = q.shape
        value_dim = v.shape[-1]
        batch = offsets.numel() - 1
        blocks = _block_sizes(attn_dim, value_dim)
        out = torch.empty(total, heads, value_dim, dtype=q.dtype, device=q.device)
        dummy = offsets  # any pointer for absent optional tensors; never read
        pb = dummy if position_bias is None else position_bias.contiguous()
        tb = dummy if time_bias is None else time_bias.contiguous()
        ts = dummy if timestamps is None else timestamps.contiguous()
        common = {
            "heads": heads,
            "attn_dim": attn_dim,
            "value_dim": value_dim,
            "alpha": meta["alpha"],
            "max_seq_len": meta["max_seq_len"],
            "contextual_len": meta["contextual_len"],
            "num_buckets": 1 if time_bias is None else time_bias.numel(),
            "CAUSAL": meta["causal"],
            "HAS_PB": position_bias is not None,
            "HAS_TB": time_bias is not None,
            "PRECISION": _precision(q.dtype),
            "UPCAST": INTERPRET and q.dtype == torch.bfloat16,
        }
        if batch > 0 and total > 0:
            grid = (batch * heads, triton.cdiv(meta["max_seq_len"], blocks["BLOCK_M"]))
            _hstu_fwd[grid](
                q, k, v, out, offsets, targets, norm, ts, pb, tb,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                v.stride(0), v.stride(1), out.stride(0), out.stride(1),
                **common, **blocks,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, position_bias, time_bias, offsets, timestamps, targets, norm)
        ctx.common, ctx.blocks, ctx.max_seq_len = common, blocks, meta["max_seq_len"]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, position_bias, time_bias, offsets, timestamps, targets, norm = ctx.saved_tensors
        common, blocks = ctx.common, ctx.blocks
        do = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_pb = position_bias is not None and ctx.needs_input_grad[3]
        grad_tb = time_bias is not None and ctx.needs_input_grad[4]
        # fp32 accumulators for the atomics, cast to the parameters' dtype at the end.
        dpb = q.new_zeros(position_bias.shape, dtype=torch.float32) if grad_pb else offsets
        dtb = q.new_zeros(time_bias.shape, dtype=torch.float32) if grad_tb else offsets
        pb = offsets if position_bias is None else position_bias.contiguous()
        tb = offsets if time_bias is None else time_bias.contiguous()
        ts = offsets if timestamps is None else timestamps.contiguous()
        batch, total, heads = offsets.numel() - 1, q.shape[0], q.shape[1]
        if batch > 0 and total > 0:
            grid = (batch * heads, triton.cdiv(ctx.max_seq_len, blocks["BLOCK_M"]))
            _hstu_bwd_dkdv[grid](
                q, k, v, do, dk, dv, offsets, targets, norm, ts, pb, tb, dpb, dtb,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                v.stride(0), v.stride(1), do.stride(0), do.stride(1),
                GRAD_PB=grad_pb, GRAD_TB=grad_tb, **common, **blocks,
            )  # fmt: skip
            _hstu_bwd_dq[grid](
                q, k, v, do, dq, offsets, targets, norm, ts, pb, tb,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                v.stride(0), v.stride(1), do.stride(0), do.stride(1),
                **common, **blocks,
            )  # fmt: skip
        else:
            for grad in (dq, dk, dv):
                grad.zero_()
        return (
            dq,
            dk,
            dv,
            dpb.to(position_bias.dtype) if grad_pb else None,
            dtb.to(time_bias.dtype) if grad_tb else None,
            None,
            None,
            None,
            None,
            None,
        )


def hstu_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float,
    causal: bool = True,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    num_targets: torch.Tensor | None = None,
    contextual_len: int = 0,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    check_inputs(q, k, v, offsets, max_seq_len, position_bias, time_bias, timestamps, num_targets)
    if not q.is_cuda:
        if not INTERPRET:
            raise RuntimeError(
                "impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before Triton is imported"
            )
        check_lengths(offsets, max_seq_len, q.shape[0])  # free on CPU; a sync on GPU, so skipped
    offsets = offsets.to(torch.int64).contiguous()
    lengths = offsets[1:] - offsets[:-1]
    targets = targets_per_sequence(num_targets, lengths).contiguous()
    norm = normalizer_per_sequence(
        normalizer, lengths.numel(), max_seq_len, torch.float32, q.device
    ).contiguous()
    meta = {
        "alpha": float(alpha),
        "max_seq_len": int(max_seq_len),
        "contextual_len": int(contextual_len),
        "causal": bool(causal),
    }
    return _HSTUTriton.apply(
        q, k, v, position_bias, time_bias, offsets, timestamps, targets, norm, meta
    )
