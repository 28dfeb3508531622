"""Pieces every HSTU attention implementation shares: input checks, the mask rule, time buckets.

Each implementation (reference, cpu, triton) computes the same function; keeping the
rule for "who may attend to whom" and the time bucketing in one place is what makes
them comparable bit for bit on the integer parts.
"""

from __future__ import annotations

import torch

# log base ~2: bucket k holds time gaps in [2^(k*0.301/ln 2), ...) -- the constant used
# by generative-recommenders, kept so that trained time-bias tables transfer.
TIME_BUCKET_DIVISOR = 0.301


def time_buckets(delta: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """bucket = clamp(floor(log(max(|delta|, 1)) / 0.301), 0, num_buckets - 1), computed in fp32.

    fp32 on purpose: the Triton kernel computes the same expression in fp32 registers, so the
    two agree on every bucket except exact ties at a boundary.
    """
    gap = delta.abs().clamp(min=1).to(torch.float32)
    return (torch.log(gap) / TIME_BUCKET_DIVISOR).floor().clamp(0, num_buckets - 1).long()


def allowed_mask(
    rows: torch.Tensor,
    cols: torch.Tensor,
    lengths: torch.Tensor,
    num_targets: torch.Tensor,
    causal: bool,
    contextual_len: int,
) -> torch.Tensor:
    """mask[..., i, j]: may position ``rows[i]`` attend to position ``cols[j]``?

    ``lengths`` and ``num_targets`` broadcast against (..., 1, 1). The rule, in one line:

        valid(i) and valid(j) and (i == j or (not candidate(j) and (causal_ok or ctx(i) or ctx(j))))

    - candidate(p) = p >= length - num_targets: candidates are seen by nobody but themselves,
      so non-candidates never see them and candidates never see each other;
    - a candidate sees every non-candidate: they all come before it, so causal_ok holds;
    - ctx(p) = p < contextual_len: contextual tokens see, and are seen by, every non-candidate.
    """
    i = rows[:, None]
    j = cols[None, :]
    length = lengths[..., None, None]
    first_candidate = length - num_targets[..., None, None]
    valid = (i < length) & (j < length)
    causal_ok = (j <= i) if causal else torch.ones_like(i == j)
    context = (i < contextual_len) | (j < contextual_len)
    return valid & ((i == j) | ((j < first_candidate) & (causal_ok | context)))


def normalizer_per_sequence(
    normalizer, batch: int, max_seq_len: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """(batch,) divisor of the SiLU weights: ``normalizer`` (number or per-sequence) or max_seq_len."""
    if normalizer is None:
        normalizer = max_seq_len
    if isinstance(normalizer, torch.Tensor):
        if normalizer.shape != (batch,):
            raise ValueError(
                f"normalizer must be a number or shape ({batch},), got {normalizer.shape}"
            )
        return normalizer.detach().to(device=device, dtype=dtype)
    return torch.full((batch,), float(normalizer), dtype=dtype, device=device)


def targets_per_sequence(num_targets, lengths: torch.Tensor) -> torch.Tensor:
    """(batch,) int64 number of candidates, clamped to [0, length]; zeros when None."""
    if num_targets is None:
        return torch.zeros_like(lengths)
    num_targets = num_targets.to(device=lengths.device, dtype=torch.int64)
    return torch.minimum(num_targets.clamp(min=0), lengths)


def check_inputs(
    q, k, v, offsets, max_seq_len, position_bias, time_bias, timestamps, num_targets
) -> None:
    """Shape checks that cost no device synchronisation (lengths are checked by the CPU paths)."""
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(
            f"q and k must be (total, heads, attn_dim) alike, got {q.shape}, {k.shape}"
        )
    if v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must be (total, heads, value_dim) with q's rows, got {v.shape}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("offsets must be 1-D of length batch + 1")
    batch = offsets.numel() - 1
    if position_bias is not None and position_bias.shape != (2 * max_seq_len - 1,):
        raise ValueError(
            f"position_bias must have shape ({2 * max_seq_len - 1},), got {tuple(position_bias.shape)}"
        )
    if time_bias is not None:
        if time_bias.dim() != 1 or time_bias.numel() < 1:
            raise ValueError("time_bias must be a non-empty 1-D tensor")
        if timestamps is None or timestamps.shape != (q.shape[0],):
            raise ValueError("time_bias needs jagged timestamps of shape (total_tokens,)")
    if num_targets is not None and num_targets.shape != (batch,):
        raise ValueError(f"num_targets must have shape ({batch},), got {tuple(num_targets.shape)}")


def check_lengths(offsets: torch.Tensor, max_seq_len: int, total: int) -> torch.Tensor:
    """Lengths of every sequence; raises if one exceeds max_seq_len (synchronises on GPU)."""
    lengths = offsets[1:] - offsets[:-1]
    if lengths.numel() and int(lengths.max()) > max_seq_len:
        raise ValueError(
            f"a sequence of length {int(lengths.max())} exceeds max_seq_len={max_seq_len}"
        )
    if int(offsets[-1]) != total:
        raise ValueError(f"offsets end at {int(offsets[-1])} but q has {total} rows")
    return lengths
