"""Seeded, sharded batches of jagged sequences for training and evaluation.

Batches hold TorchRec ``JaggedTensor``s (values + lengths), never padded to
the dataset's longest sequence; ``SequenceBatch.padded()`` gives a padded view,
only as wide as the longest sequence in that batch, for models that want one.

Sharding: with ``world_size`` ranks, each rank iterates over its own disjoint
share of the examples. Training (``drop_last=True``) gives every rank the same
number of batches, as data-parallel training requires; evaluation
(``drop_last=False``) covers every example exactly once across ranks.
Order depends only on (seed, epoch): the same seed gives the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from kernels import jagged_to_padded

from .jagged_array import JaggedArray
from .splits import SequenceExamples

ITEM_FEATURE = "item_id"  # the KeyedJaggedTensor key the item embedding table reads


@dataclass
class SequenceBatch:
    user_ids: torch.Tensor  # (B,)
    item_ids: JaggedTensor  # values (total,), lengths (B,)
    timestamps: JaggedTensor | None = None
    targets: torch.Tensor | None = None  # (B,) for evaluation batches
    target_timestamps: torch.Tensor | None = None
    history: JaggedTensor | None = None  # every earlier item, for excluding seen items

    def __len__(self) -> int:
        return self.user_ids.numel()

    @property
    def max_length(self) -> int:
        lengths = self.item_ids.lengths()
        return int(lengths.max()) if lengths.numel() else 0

    @property
    def num_tokens(self) -> int:
        return self.item_ids.values().numel()

    @property
    def padded_fraction(self) -> float:
        """Share of a (B, max_length) padded view that would be padding."""
        cells = len(self) * self.max_length
        return 1.0 - self.num_tokens / cells if cells else 0.0

    def features(self) -> KeyedJaggedTensor:
        """Item ids as the KeyedJaggedTensor an ``EmbeddingCollection`` takes."""
        return KeyedJaggedTensor.from_jt_dict({ITEM_FEATURE: self.item_ids})

    def padded(
        self, max_len: int | None = None, padding_value: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(item ids (B, L), mask (B, L)) with L the batch's longest sequence by default."""
        width = self.max_length if max_len is None else max_len
        offsets = self.item_ids.offsets()
        ids = jagged_to_padded(self.item_ids.values(), offsets, width, padding_value)
        mask = jagged_to_padded(
            torch.ones_like(self.item_ids.values(), dtype=torch.bool), offsets, width, False
        )
        return ids, mask


def _jagged_tensor(array: JaggedArray, rows: np.ndarray) -> JaggedTensor:
    picked = array.take(rows)
    return JaggedTensor(
        values=torch.from_numpy(np.ascontiguousarray(picked.values)),
        lengths=torch.from_numpy(picked.lengths),
    )


class SequenceLoader:
    """Iterates ``SequenceExamples`` as ``SequenceBatch``es.

    ``bucket_by_length`` groups examples of similar length into the same batch
    (within windows of 50 batches, in shuffled window order) so that models
    that pad per batch waste little; the set of examples per epoch is unchanged.
    """

    _BUCKET_WINDOW = 50

    def __init__(
        self,
        examples: SequenceExamples,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        bucket_by_length: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
            )
        self.examples = examples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.bucket_by_length = bucket_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def _rank_rows(self) -> np.ndarray:
        count = len(self.examples)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(count)
            if self.shuffle
            else np.arange(count)
        )
        if self.drop_last:  # equal share per rank: drop the remainder
            order = order[: count - count % self.world_size]
        return order[self.rank :: self.world_size]

    def _batches(self) -> list[np.ndarray]:
        rows = self._rank_rows()
        if self.drop_last:
            rows = rows[: len(rows) - len(rows) % self.batch_size]
        if self.bucket_by_length and len(rows):
            rows = self._bucket(rows)
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _bucket(self, rows: np.ndarray) -> np.ndarray:
        lengths = self.examples.item_ids.lengths[rows]
        window = self.batch_size * self._BUCKET_WINDOW
        bucketed = []
        for start in range(0, len(rows), window):
            chunk = rows[start : start + window]
            bucketed.append(chunk[np.argsort(lengths[start : start + window], kind="stable")])
        rows = np.concatenate(bucketed)
        # Shuffle whole batches so the long ones do not all come last.
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(batches))
            batches = [batches[i] for i in order]
        return np.concatenate(batches)

    def __len__(self) -> int:
        rows = len(self._rank_rows())
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[SequenceBatch]:
        examples = self.examples

        def jagged(array, rows):
            return None if array is None else _jagged_tensor(array, rows)

        def dense(array, rows):
            return None if array is None else torch.from_numpy(array[rows])

        for rows in self._batches():
            yield SequenceBatch(
                user_ids=torch.from_numpy(examples.user_ids[rows]),
                item_ids=_jagged_tensor(examples.item_ids, rows),
                timestamps=jagged(examples.timestamps, rows),
                targets=dense(examples.targets, rows),
                target_timestamps=dense(examples.target_timestamps, rows),
                history=jagged(examples.history, rows),
            )
