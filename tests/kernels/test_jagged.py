"""jagged <-> padded against a plain per-sequence loop, forward and backward."""

from __future__ import annotations

import pytest
import torch

from kernels import jagged_to_padded, lengths_to_offsets, padded_to_jagged


def _reference_to_padded(values, lengths, max_len, padding_value):
    rows, start = [], 0
    for length in lengths.tolist():
        row = values.new_full((max_len, *values.shape[1:]), padding_value)
        kept = min(length, max_len)
        row[:kept] = values[start : start + kept]
        rows.append(row)
        start += length
    return torch.stack(rows) if rows else values.new_zeros((0, max_len, *values.shape[1:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("feature_shape", [(), (3,), (2, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_matches_reference(dtype, feature_shape, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 12, (9,), generator=generator)
    lengths[:3] = torch.tensor([0, 1, 11])  # always include empty and single-item sequences
    lengths = lengths[torch.randperm(9, generator=generator)]
    values = (torch.randn(int(lengths.sum()), *feature_shape, generator=generator) * 100).to(dtype)
    offsets = lengths_to_offsets(lengths)
    max_len = int(lengths.max())
    padded = jagged_to_padded(values, offsets, max_len, padding_value=-1)
    assert torch.equal(padded, _reference_to_padded(values, lengths, max_len, -1))
    assert torch.equal(padded_to_jagged(padded, offsets), values)
    narrow = jagged_to_padded(values, offsets, 4)  # truncation keeps each row's first entries
    assert torch.equal(narrow, _reference_to_padded(values, lengths, 4, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_flow_through_both_directions(dtype):
    lengths = torch.tensor([3, 0, 1, 5])
    offsets = lengths_to_offsets(lengths)
    values = torch.randn(9, 2, dtype=dtype, requires_grad=True)
    weights = torch.randn(4, 6, 2, dtype=dtype)
    (jagged_to_padded(values, offsets, 6) * weights).sum().backward()
    expected = padded_to_jagged(weights, offsets)
    assert torch.allclose(values.grad, expected)

    padded = torch.randn(4, 5, 2, dtype=dtype, requires_grad=True)
    padded_to_jagged(padded, offsets).sum().backward()
    assert torch.equal(
        padded.grad, _reference_to_padded(torch.ones(9, 2, dtype=dtype), lengths, 5, 0)
    )


def test_empty_batch_and_too_narrow_padding():
    empty = jagged_to_padded(torch.zeros(0, 3), torch.zeros(1, dtype=torch.int64), 4)
    assert empty.shape == (0, 4, 3)
    with pytest.raises(ValueError, match="does not fit"):
        padded_to_jagged(torch.zeros(2, 3), lengths_to_offsets(torch.tensor([2, 4])))
