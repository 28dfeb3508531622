"""Conversions between jagged (values + offsets) and padded (batch, max_len, ...) tensors.

A jagged batch stores B sequences back to back in ``values`` of shape
(total, *feature_shape); sequence ``b`` is ``values[offsets[b]:offsets[b + 1]]``.
The padded view puts sequence ``b`` at ``padded[b, :length_b]`` (left-aligned)
and fills the rest with ``padding_value``. Sequences longer than ``max_len``
keep their first ``max_len`` entries (truncate before batching to keep the most
recent ones instead).

Both directions are index-based gathers/scatters, so they work for any dtype
(item ids as well as activations), on any device, and are differentiable.
"""

from __future__ import annotations

import torch


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths.to(torch.int64), dim=0, out=offsets[1:])
    return offsets


def offsets_to_lengths(offsets: torch.Tensor) -> torch.Tensor:
    return offsets[1:] - offsets[:-1]


def _positions(
    offsets: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every kept jagged element: its batch row, its position in the row, its flat index."""
    lengths = offsets_to_lengths(offsets).clamp(max=max_len)
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    starts = lengths_to_offsets(lengths)
    columns = torch.arange(rows.numel(), device=offsets.device) - starts[rows]
    return rows, columns, offsets[:-1][rows] + columns


def jagged_to_padded(
    values: torch.Tensor, offsets: torch.Tensor, max_len: int, padding_value: float = 0
) -> torch.Tensor:
    """(total, *F) jagged -> (B, max_len, *F) padded."""
    batch = offsets.numel() - 1
    padded = values.new_full((batch, max_len, *values.shape[1:]), padding_value)
    rows, columns, flat = _positions(offsets, max_len)
    padded[rows, columns] = values[flat]
    return padded


def padded_to_jagged(padded: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, L, *F) padded -> (total, *F) jagged; each row must fit in L."""
    lengths = offsets_to_lengths(offsets)
    if lengths.numel() and int(lengths.max()) > padded.shape[1]:
        raise ValueError(
            f"a sequence of length {int(lengths.max())} does not fit padded width {padded.shape[1]}"
        )
    rows, columns, _ = _positions(offsets, padded.shape[1])
    return padded[rows, columns]
