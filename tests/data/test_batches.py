"""Jagged batches: seeded order, disjoint rank shards, TorchRec types, padded views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.data import JaggedArray, SequenceExamples, SequenceLoader


@pytest.fixture
def examples() -> SequenceExamples:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, size=203)
    lengths[:3] = [0, 1, 29]
    items = JaggedArray.from_lengths(rng.integers(1, 500, size=lengths.sum()), lengths)
    return SequenceExamples(np.arange(1, 204), items, targets=rng.integers(1, 500, size=203))


def _order(loader):
    return [batch.user_ids.tolist() for batch in loader]


def _users(loader):
    return [user for batch in loader for user in batch.user_ids.tolist()]


def test_same_seed_same_batches_other_seed_or_epoch_differs(examples):
    make = lambda seed: SequenceLoader(examples, 16, shuffle=True, seed=seed)  # noqa: E731
    first, second = make(3), make(3)
    assert _order(first) == _order(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.item_ids.values(), b.item_ids.values())
    assert _order(make(4)) != _order(first)
    epoch_one = make(3)
    epoch_one.set_epoch(1)
    assert _order(epoch_one) != _order(first)
    assert sorted(_users(epoch_one)) == list(range(1, 204))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_shards_are_disjoint(examples, world_size):
    eval_parts = [
        _order(SequenceLoader(examples, 10, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    users = [u for part in eval_parts for batch in part for u in batch]
    assert sorted(users) == list(range(1, 204))  # evaluation: everyone exactly once

    train = [
        SequenceLoader(
            examples, 8, shuffle=True, seed=1, rank=r, world_size=world_size, drop_last=True
        )
        for r in range(world_size)
    ]
    counts = {len(_order(loader)) for loader in train}
    assert len(counts) == 1 and counts == {len(train[0])}  # same number of steps on every rank
    seen = [set(_users(loader)) for loader in train]
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not seen[i] & seen[j]


def test_batch_types_and_padded_view(examples):
    batch = next(iter(SequenceLoader(examples, 5)))
    assert isinstance(batch.item_ids, JaggedTensor)
    assert batch.item_ids.lengths().tolist() == [0, 1, 29, *examples.item_ids.lengths[3:5].tolist()]
    kjt = batch.features()
    assert isinstance(kjt, KeyedJaggedTensor) and kjt.keys() == ["item_id"]
    assert torch.equal(kjt["item_id"].values(), batch.item_ids.values())
    ids, mask = batch.padded()
    assert ids.shape == (5, 29) and mask.sum().item() == batch.num_tokens
    for row in range(5):
        expected = examples.item_ids.row(row)
        assert ids[row, : len(expected)].tolist() == expected.tolist()
        assert (ids[row, len(expected) :] == 0).all()
    assert batch.padded_fraction == pytest.approx(1 - batch.num_tokens / (5 * 29))
    assert batch.targets.tolist() == examples.targets[:5].tolist()


def test_length_bucketing_keeps_examples_and_cuts_padding(examples):
    plain = SequenceLoader(examples, 8, shuffle=True, seed=2)
    bucketed = SequenceLoader(examples, 8, shuffle=True, seed=2, bucket_by_length=True)
    assert sorted(_users(plain)) == sorted(_users(bucketed))
    waste = lambda loader: np.mean([b.padded_fraction for b in loader])  # noqa: E731
    assert waste(bucketed) < waste(plain) / 2


def test_bad_arguments(examples):
    with pytest.raises(ValueError, match="batch_size"):
        SequenceLoader(examples, 0)
    with pytest.raises(ValueError, match="rank"):
        SequenceLoader(examples, 4, rank=2, world_size=2)
