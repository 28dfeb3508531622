"""HSTU attention, padded PyTorch: the ground truth the fast paths are tested against.

Materialises (batch, heads, max_seq_len, max_seq_len) scores on purpose: every term of
the formula is one line, so it can be checked by reading. Memory grows as B * H * N^2;
use it for tests and small batches only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..jagged import jagged_to_padded, padded_to_jagged
from .common import (
    allowed_mask,
    check_inputs,
    check_lengths,
    normalizer_per_sequence,
    targets_per_sequence,
    time_buckets,
)


def hstu_attention_reference(
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
    lengths = check_lengths(offsets, max_seq_len, q.shape[0])
    batch, n = lengths.numel(), max_seq_len
    # fp32 accumulation for fp32/bf16/fp16; fp64 stays fp64 so gradcheck-style tests are exact.
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32

    def padded(x):  # (total, H, D) -> (B, H, N, D)
        return jagged_to_padded(x.to(compute), offsets, n).transpose(1, 2)

    qp, kp, vp = padded(q), padded(k), padded(v)
    scores = alpha * (qp @ kp.transpose(-1, -2))  # (B, H, N, N)

    positions = torch.arange(n, device=q.device)
    if position_bias is not None:
        relative = positions[None, :] - positions[:, None] + n - 1  # [i, j] -> j - i + N - 1
        scores = scores + position_bias.to(compute)[relative]
    if time_bias is not None:
        ts = jagged_to_padded(timestamps, offsets, n)  # (B, N); padding rows are masked below
        buckets = time_buckets(ts[:, :, None] - ts[:, None, :], time_bias.numel())
        scores = scores + time_bias.to(compute)[buckets][:, None]

    mask = allowed_mask(
        positions,
        positions,
        lengths,
        targets_per_sequence(num_targets, lengths),
        causal,
        contextual_len,
    )  # (B, N, N)
    norm = normalizer_per_sequence(normalizer, batch, n, compute, q.device)
    weights = F.silu(scores) * mask[:, None] / norm[:, None, None, None]
    out = weights @ vp  # (B, H, N, Dv)
    return padded_to_jagged(out.transpose(1, 2), offsets).to(q.dtype)
