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
def _scores(
    q,
    k,
    offs_m,
    offs_n,
    ts_m,
    ts_n,
    length,
    first_candidate,
    contextual_len,
    alpha,
    max_seq_len,
    PB,
    TB,
    num_buckets,
    CAUSAL: tl.constexpr,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 scores (BLOCK_M, BLOCK_N) and the mask; the rule is common.allowed_mask's."""
    s = _dot(q, tl.trans(k), PRECISION, UPCAST) * alpha
    if HAS_PB:
        s += tl.load(PB + _position_index(offs_m, offs_n, max_seq_len)).to(tl.float32)
    if HAS_TB:
        s += tl.load(TB + _time_bucket(ts_m, ts_n, num_buckets)).to(tl.float32)
    i = offs_m[:, None]
    j = offs_n[None, :]
    valid = (i < length) & (j < length)
    context = (i < contextual_len) | (j < contextual_len)
    seen = j < first_candidate  # nobody but itself sees a candidate
    if CAUSAL:
        seen = seen & ((j <= i) | context)
    return s, valid & ((i == j) | seen)


@triton.jit
def _sequence(offsets, targets, pid_bh, heads):
    b = pid_bh // heads
    start = tl.load(offsets + b)
    length = (tl.load(offsets + b + 1) - start).to(tl.int32)
    first_candidate = length - tl.load(targets + b).to(tl.int32)
    return b, pid_bh % heads, start, length, first_candidate


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
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_m = offs_m < length
    q = tl.load(
        Q + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=row_m[:, None] & (offs_d[None, :] < attn_dim),
        other=0.0,
    )
    ts_m = offs_m  # placeholder when there is no time bias
    if HAS_TB:
        ts_m = tl.load(TS + start + offs_m, mask=row_m, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    # Causal: keys past the block's last query are never seen, unless the block holds
    # contextual queries (they see every non-candidate).
    end_n = length
    if CAUSAL:
        end_n = tl.where(start_m >= contextual_len, tl.minimum(start_m + BLOCK_M, length), length)
    # Blocks past the end of a short sequence do nothing: zero iterations, masked stores
    # (a loop bound rather than an early return, which keeps to what every Triton compiles).
    end_n = tl.where(start_m < length, end_n, 0)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        row_n = offs_n < length
        k = tl.load(
            K + (start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
            mask=row_n[:, None] & (offs_d[None, :] < attn_dim),
            other=0.0,
        )
        v = tl.load(
            V + (start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
            mask=row_n[:, None] & (offs_dv[None, :] < value_dim),
            other=0.0,
        )
        ts_n = offs_n
        if HAS_TB:
            ts_n = tl.load(TS + start + offs_n, mask=row_n, other=0)
        s, allowed = _scores(
            q,
            k,
            offs_m,
            offs_n,
            ts_m,
            ts_n,
            length,
            first_candidate,
            contextual_len,
            alpha,
            max_seq_len,
            PB,
            TB,
            num_buckets,
            CAUSAL,
            HAS_PB,
            HAS_TB,
            PRECISION,
            UPCAST,
        )
        w = tl.where(allowed, s * tl.sigmoid(s), 0.0)
        acc += _dot(w.to(v.dtype), v, PRECISION, UPCAST)
    acc = acc / tl.load(norm + b)
    tl.store(
        Out + (start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_dv[None, :],
        acc.to(Out.dtype.element_ty),
        mask=row_m[:, None] & (offs_dv[None, :] < value_dim),
    )


# ---------------------------------------------------------------------------------------
# Backward: dK, dV (and bias gradients) per key block.
# ---------------------------------------------------------------------------------------


@triton.jit
def _dkdv_query_block(
    dk,
    dv,
    k,
    v,
    ts_n,
    offs_n,
    start_m,
    Q,
    DO,
    TS,
    PB,
    TB,
    DPB,
    DTB,
    start,
    h,
    stride_qt,
    stride_qh,
    stride_dot,
    stride_doh,
    length,
    first_candidate,
    contextual_len,
    alpha,
    inv_norm,
    attn_dim,
    value_dim,
    max_seq_len,
    num_buckets,
    CAUSAL: tl.constexpr,
    HAS_PB: tl.constexpr,
    HAS_TB: tl.constexpr,
    GRAD_PB: tl.constexpr,
    GRAD_TB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_m = offs_m < length
    q = tl.load(
        Q + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=row_m[:, None] & (offs_d[None, :] < attn_dim),
        other=0.0,
    )
    do = tl.load(
        DO + (start + offs_m)[:, None] * stride_dot + h * stride_doh + offs_dv[None, :],
        mask=row_m[:, None] & (offs_dv[None, :] < value_dim),
        other=0.0,
    )
    ts_m = offs_m
    if HAS_TB:
        ts_m = tl.load(TS + start + offs_m, mask=row_m, other=0)
    s, allowed = _scores(
        q,
        k,
        offs_m,
        offs_n,
        ts_m,
        ts_n,
        length,
        first_candidate,
        contextual_len,
        alpha,
        max_seq_len,
        PB,
        TB,
        num_buckets,
        CAUSAL,
        HAS_PB,
        HAS_TB,
        PRECISION,
        UPCAST,
    )
    sig = tl.sigmoid(s)
    w = tl.where(allowed, s * sig * inv_norm, 0.0)
    dv += _dot(tl.trans(w.to(do.dtype)), do, PRECISION, UPCAST)
    dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
    # d SiLU(s) / ds = sig * (1 + s * (1 - sig))
    ds = tl.where(allowed, dp * sig * (1.0 + s * (1.0 - sig)) * inv_norm, 0.0)
    dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST) * alpha
    # Bias gradients: every allowed pair adds its ds to one table entry. Relaxed atomics:
    # only the final sums are read, after the kernel, so no ordering is needed.
    if GRAD_PB:
        tl.atomic_add(
            DPB + _position_index(offs_m, offs_n, max_seq_len), ds, mask=allowed, sem="relaxed"
        )
    if GRAD_TB:
        tl.atomic_add(DTB + _time_bucket(ts_m, ts_n, num_buckets), ds, mask=allowed, sem="relaxed")
    return dk, dv


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
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_n = offs_n < length
    k = tl.load(
        K + (start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
        mask=row_n[:, None] & (offs_d[None, :] < attn_dim),
        other=0.0,
    )
    v = tl.load(
        V + (start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
        mask=row_n[:, None] & (offs_dv[None, :] < value_dim),
        other=0.0,
    )
    ts_n = offs_n
    if HAS_TB:
        ts_n = tl.load(TS + start + offs_n, mask=row_n, other=0)
    inv_norm = 1.0 / tl.load(norm + b)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    # Which query blocks see these keys: causal -> queries from the diagonal on, plus the
    # blocks of contextual queries (loop 1), which see every non-candidate key.
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
    # Key blocks past the end of a short sequence do nothing (see the forward).
    stop_m = tl.where(start_n < length, length, 0)
    for start_m in range(0, tl.minimum(context_end, stop_m), BLOCK_M):
        dk, dv = _dkdv_query_block(
            dk,
            dv,
            k,
            v,
            ts_n,
            offs_n,
            start_m,
            Q,
            DO,
            TS,
            PB,
            TB,
            DPB,
            DTB,
            start,
            h,
            stride_qt,
            stride_qh,
            stride_dot,
            stride_doh,
            length,
            first_candidate,
            contextual_len,
            alpha,
            inv_norm,
            attn_dim,
            value_dim,
            max_seq_len,
            num_buckets,
            CAUSAL,
            HAS_PB,
            HAS_TB,
            GRAD_PB,
            GRAD_TB,
            PRECISION,
            UPCAST,
            BLOCK_M,
            BLOCK_D,
            BLOCK_DV,
        )
    for start_m in range(begin_m, stop_m, BLOCK_M):
        dk, dv = _dkdv_query_block(
            dk,
            dv,
            k,
            v,
            ts_n,
            offs_n,
            start_m,
            Q,
            DO,
            TS,
            PB,
            TB,
            DPB,
            DTB,
            start,
            h,
            stride_qt,
            stride_qh,
            stride_dot,
            stride_doh,
            length,
            first_candidate,
            contextual_len,
            alpha,
            inv_norm,
            attn_dim,
            value_dim,
            max_seq_len,
            num_buckets,
            CAUSAL,
            HAS_PB,
            HAS_TB,
            GRAD_PB,
            GRAD_TB,
            PRECISION,
            UPCAST,
            BLOCK_M,
            BLOCK_D,
            BLOCK_DV,
        )
    # dK/dV share q's row layout (contiguous (total, H, D) buffers made by the wrapper).
    tl.store(
        DK + (start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=row_n[:, None] & (offs_d[None, :] < attn_dim),
    )
    tl.store(
        DV + (start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
        dv.to(DV.dtype.element_ty),
        mask=row_n[:, None] & (offs_dv[None, :] < value_dim),
    )


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
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_m = offs_m < length
    q = tl.load(
        Q + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=row_m[:, None] & (offs_d[None, :] < attn_dim),
        other=0.0,
    )
    do = tl.load(
        DO + (start + offs_m)[:, None] * stride_dot + h * stride_doh + offs_dv[None, :],
        mask=row_m[:, None] & (offs_dv[None, :] < value_dim),
        other=0.0,
    )
    ts_m = offs_m
    if HAS_TB:
        ts_m = tl.load(TS + start + offs_m, mask=row_m, other=0)
    inv_norm = 1.0 / tl.load(norm + b)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    end_n = length
    if CAUSAL:
        end_n = tl.where(start_m >= contextual_len, tl.minimum(start_m + BLOCK_M, length), length)
    # Blocks past the end of a short sequence do nothing: zero iterations, masked stores
    # (a loop bound rather than an early return, which keeps to what every Triton compiles).
    end_n = tl.where(start_m < length, end_n, 0)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        row_n = offs_n < length
        k = tl.load(
            K + (start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_d[None, :],
            mask=row_n[:, None] & (offs_d[None, :] < attn_dim),
            other=0.0,
        )
        v = tl.load(
            V + (start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
            mask=row_n[:, None] & (offs_dv[None, :] < value_dim),
            other=0.0,
        )
        ts_n = offs_n
        if HAS_TB:
            ts_n = tl.load(TS + start + offs_n, mask=row_n, other=0)
        s, allowed = _scores(
            q,
            k,
            offs_m,
            offs_n,
            ts_m,
            ts_n,
            length,
            first_candidate,
            contextual_len,
            alpha,
            max_seq_len,
            PB,
            TB,
            num_buckets,
            CAUSAL,
            HAS_PB,
            HAS_TB,
            PRECISION,
            UPCAST,
        )
        sig = tl.sigmoid(s)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = tl.where(allowed, dp * sig * (1.0 + s * (1.0 - sig)) * inv_norm, 0.0)
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST) * alpha
    tl.store(
        DQ + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_m[:, None] & (offs_d[None, :] < attn_dim),
    )


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
