"""HSTU attention for CPUs: padded attention per group of similar lengths, hand-written backward.

Why this beats the padded reference on jagged batches:
- Padding every sequence to max_seq_len costs B * N^2 score entries; recommendation
  batches are heavy-tailed (most users have short histories), so most of that is padding.
  Sorting sequences by length and padding each group only to its own longest member cuts
  the work to about sum_b L_b^2 while keeping the fast batched matmuls.
- The group boundaries come from a small dynamic programme over the sorted lengths that
  minimises (score entries + a fixed per-group overhead), so a batch of equal lengths is
  one group and a heavy-tailed batch gets a few.
- Causal groups are cut into query chunks, each reading only the keys up to its last
  query, which skips most of the masked upper triangle.
- Forward and backward are one autograd.Function with a hand-written backward (see
  _GroupedHSTU for why): fewer intermediates kept, fewer full-size buffers written.

On a machine whose cores other processes also use, OpenMP's default spin-waiting makes
every parallel op wait for the scheduler, and this path (dozens of medium-sized ops) then
fell below the reference's speed in our measurements. OMP_WAIT_POLICY=PASSIVE in the
process environment, or one thread per process, avoids it: see docs/benchmarks.md (HSTU attention kernels on CPU).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .common import (
    allowed_mask,
    check_inputs,
    check_lengths,
    normalizer_per_sequence,
    targets_per_sequence,
    time_buckets,
)

# Cost of one extra group (gathers, a dozen small ops, Python), in (score entry x head)
# units of attention work. A sweep from 3k to 200k on a 2-core machine (128 sequences of
# length 1..200, and a heavy-tailed batch up to 512) moved fwd+bwd time by under 15%.
GROUP_OVERHEAD = 60_000
# Cap on score entries (G * H * W * W) per group, so memory stays bounded for big batches.
MAX_GROUP_ENTRIES = 1 << 25


def plan_groups(sorted_lengths: list[int], heads: int) -> list[tuple[int, int]]:
    """Split lengths sorted in decreasing order into [start, end) groups padded to their first.

    Minimises sum over groups of (GROUP_OVERHEAD + count * heads * width^2): exact dynamic
    programme, O(B^2) numpy work, negligible next to the attention itself.
    """
    n = len(sorted_lengths)
    widths = np.asarray(sorted_lengths, dtype=np.float64)
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        counts = end - np.arange(end)
        cost = best[:end] + GROUP_OVERHEAD + counts * heads * widths[:end] ** 2
        start = int(np.argmin(cost))
        best[end], start_of[end] = cost[start], start
    groups, end = [], n
    while end > 0:
        start = int(start_of[end])
        width = sorted_lengths[start]
        # Bound memory: cut an oversized group into chunks of the same width.
        per_chunk = max(1, MAX_GROUP_ENTRIES // max(1, heads * width * width))
        groups.extend((s, min(s + per_chunk, end)) for s in range(start, end, per_chunk))
        end = start
    return groups


@dataclass
class _Group:
    """One group of sequences padded to a common width, and the constants it needs."""

    width: int
    count: int
    index: torch.Tensor  # (count * width,) jagged row behind each padded slot; row 0 for padding
    keep: torch.Tensor  # padded slots that hold real tokens, in jagged order within the group
    scale: torch.Tensor  # (count, 1, width, width) mask / normalizer
    buckets: torch.Tensor | None  # (count, 1, width, width) time-bias bucket of each pair
    chunks: list[tuple[int, int, int]]  # (first query, end query, end key) covering the rows


# Causal groups are cut into query chunks of about this many rows; chunk [a, b) only reads
# keys [0, b), which skips most of the masked upper triangle (4 chunks do 5/8 of the
# square's work). More, smaller chunks lose more to per-op overhead than they save.
QUERY_CHUNK = 64
MAX_CHUNKS = 4


def query_chunks(width: int, causal: bool, contextual_len: int) -> list[tuple[int, int, int]]:
    """(start, end, key_end) per query chunk; key_end = width where a chunk must see every key."""
    parts = min(MAX_CHUNKS, max(1, round(width / QUERY_CHUNK))) if causal else 1
    bounds = [round(width * p / parts) for p in range(parts + 1)]
    # Contextual queries see every non-candidate key, so their chunk reads the full width.
    return [
        (start, end, width if start < contextual_len else end)
        for start, end in itertools.pairwise(bounds)
    ]


def _diagonal_sums(matrix: torch.Tensor, first_row: int, max_seq_len: int, out: torch.Tensor):
    """out[j - i + max_seq_len - 1] += matrix[i - first_row, j] for a (R, C) block of rows.

    Skews the row-flipped block so that each diagonal becomes a column (pad each row by R,
    re-read the buffer with a row stride of C + R - 1), then sums columns: one pass, no
    scatter. Column c of the skewed block holds j - i = c - (R - 1) - first_row.
    """
    rows, cols = matrix.shape
    padded = torch.nn.functional.pad(matrix.flip(0), (0, rows))
    sums = padded.flatten()[: rows * (cols + rows - 1)].view(rows, cols + rows - 1).sum(0)
    start = max_seq_len - 1 - first_row - (rows - 1)
    out[start : start + cols + rows - 1] += sums


class _GroupedHSTU(torch.autograd.Function):
    """Forward and backward over all groups at once, returning jagged tensors.

    One Function rather than autograd through per-group gathers: the backward of each
    gather zero-fills a gradient as large as the whole input and scatter-adds into it, so
    the cost grows as groups x tokens; here each jagged gradient is assembled once, by the
    same permutation as the output, and the bias gradients by diagonal sums and one
    scatter-add per group. Only the scores are kept for the backward; SiLU and its slope
    are recomputed from them.
    """

    @staticmethod
    def forward(ctx, q, k, v, position_bias, time_bias, groups, inverse, alpha, max_seq_len):
        heads, compute = q.shape[1], q.dtype
        position_table = None
        if position_bias is not None:
            positions = torch.arange(max_seq_len, device=q.device)
            relative = positions[None, :] - positions[:, None] + max_seq_len - 1
            position_table = position_bias.to(compute)[relative]
        time_table = None if time_bias is None else time_bias.to(compute)
        outputs, saved_scores = [], []
        scaled_q = q * alpha  # scaling the tokens is cheaper than scaling the scores
        for group in groups:
            qg, kg, vg = (_gather(x, group, heads) for x in (scaled_q, k, v))
            parts = []
            for start, end, key_end in group.chunks:
                scores = torch.matmul(qg[:, :, start:end], kg[:, :, :key_end].transpose(-1, -2))
                # Sum the biases on the head-free (G, 1, rows, keys) shape, then add once.
                bias = None
                if time_table is not None:
                    bias = time_table[group.buckets[:, :, start:end, :key_end]]
                if position_table is not None:
                    position = position_table[start:end, :key_end]
                    bias = position if bias is None else bias.add_(position)
                if bias is not None:
                    scores += bias
                weights = torch.nn.functional.silu(scores)
                weights.mul_(group.scale[:, :, start:end, :key_end])
                parts.append(torch.matmul(weights, vg[:, :, :key_end]))
                saved_scores.append(scores)
            outputs.append(_scatter(torch.cat(parts, dim=2), group))
        ctx.save_for_backward(q, k, v, inverse)
        ctx.groups, ctx.saved_scores = groups, saved_scores
        ctx.alpha, ctx.max_seq_len = alpha, max_seq_len
        ctx.bias_shapes = (
            None if position_bias is None else position_bias.shape,
            None if time_bias is None else time_bias.shape,
        )
        return torch.cat(outputs).index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, inverse = ctx.saved_tensors
        heads, n, alpha = q.shape[1], ctx.max_seq_len, ctx.alpha
        position_shape, time_shape = ctx.bias_shapes
        want_position = position_shape is not None and ctx.needs_input_grad[3]
        want_time = time_shape is not None and ctx.needs_input_grad[4]
        grad_position = q.new_zeros(position_shape) if want_position else None
        grad_time = q.new_zeros(time_shape) if want_time else None
        grads_q, grads_k, grads_v = [], [], []
        saved_scores = iter(ctx.saved_scores)
        for group in ctx.groups:
            qg, kg, vg = (_gather(x, group, heads) for x in (q, k, v))
            # Padding slots read some real row's gradient: harmless, their scale is zero.
            go = _gather(grad_out, group, heads)
            dq_parts, dk, dv = [], torch.zeros_like(kg), torch.zeros_like(vg)
            for start, end, key_end in group.chunks:
                scores = next(saved_scores)
                scale = group.scale[:, :, start:end, :key_end]
                go_c = go[:, :, start:end]
                sig = torch.sigmoid(scores)
                weights = (scores * sig).mul_(scale)
                dv[:, :, :key_end] += torch.matmul(weights.transpose(-1, -2), go_c)
                del weights
                # d SiLU(s) / ds = sig * (1 + s * (1 - sig))
                grad_scores = torch.matmul(go_c, vg[:, :, :key_end].transpose(-1, -2))
                grad_scores.mul_(scale).mul_((1 - sig).mul_(scores).add_(1).mul_(sig))
                del sig
                dq_parts.append(torch.matmul(grad_scores, kg[:, :, :key_end]))
                dk[:, :, :key_end] += torch.matmul(
                    grad_scores.transpose(-1, -2), qg[:, :, start:end]
                )
                if want_position or want_time:
                    # Biases are shared by all heads: (G, rows, keys).
                    grad_bias = grad_scores.sum(1)
                    if want_position:
                        _diagonal_sums(grad_bias.sum(0), start, n, grad_position)
                    if want_time:
                        buckets = group.buckets[:, 0, start:end, :key_end]
                        grad_time.scatter_add_(0, buckets.flatten(), grad_bias.flatten())
            grads_q.append(_scatter(torch.cat(dq_parts, dim=2).mul_(alpha), group))
            grads_k.append(_scatter(dk.mul_(alpha), group))
            grads_v.append(_scatter(dv, group))
        ctx.saved_scores = None

        def assemble(parts):
            return torch.cat(parts).index_select(0, inverse)

        return (
            assemble(grads_q),
            assemble(grads_k),
            assemble(grads_v),
            grad_position,
            grad_time,
            None,
            None,
            None,
            None,
        )


def _gather(x: torch.Tensor, group: _Group, heads: int) -> torch.Tensor:
    """(total, H, D) jagged -> (G, H, W, D) padded for one group."""
    return x.index_select(0, group.index).view(group.count, group.width, heads, -1).transpose(1, 2)


def _scatter(x: torch.Tensor, group: _Group) -> torch.Tensor:
    """(G, H, W, D) padded -> (tokens of the group, H, D), padding dropped."""
    heads, dim = x.shape[1], x.shape[-1]
    return x.transpose(1, 2).reshape(-1, heads, dim).index_select(0, group.keep)


def hstu_attention_cpu(
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
    total, heads, _ = q.shape
    batch, n = lengths.numel(), max_seq_len
    if total == 0:
        return (v * 0).to(q.dtype)  # keeps the (empty) output attached to the graph
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    device = q.device

    targets = targets_per_sequence(num_targets, lengths)
    norm = normalizer_per_sequence(normalizer, batch, n, compute, device)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    nonempty = sum(1 for length in sorted_lengths if length > 0)
    positions = torch.arange(n, device=device)

    groups, rows = [], []
    for start, end in plan_groups(sorted_lengths[:nonempty], heads):
        width, members = sorted_lengths[start], order[start:end]
        cols = positions[:width]
        valid = cols[None, :] < lengths[members, None]  # (G, W)
        index = torch.where(valid, offsets[members, None] + cols[None, :], 0)
        mask = allowed_mask(cols, cols, lengths[members], targets[members], causal, contextual_len)
        buckets = None
        if time_bias is not None:
            ts = timestamps[index]
            buckets = time_buckets(ts[:, :, None] - ts[:, None, :], time_bias.numel())[:, None]
        keep = valid.flatten().nonzero().squeeze(1)
        groups.append(
            _Group(
                width=width,
                count=end - start,
                index=index.flatten(),
                keep=keep,
                scale=(mask.to(compute) / norm[members, None, None])[:, None],
                buckets=buckets,
                chunks=query_chunks(width, causal, contextual_len),
            )
        )
        rows.append(index.flatten().index_select(0, keep))
    # Groups come out in length order; one inverse permutation restores jagged order.
    inverse = torch.argsort(torch.cat(rows))
    out = _GroupedHSTU.apply(
        q.to(compute),
        k.to(compute),
        v.to(compute),
        position_bias,
        time_bias,
        groups,
        inverse,
        alpha,
        n,
    )
    return out.to(q.dtype)
