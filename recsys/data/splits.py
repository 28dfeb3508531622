"""Leave-one-out splits for next-item prediction.

For a user with items ``x_1 .. x_n`` (n >= 3):

- train: ``x_1 .. x_{n-2}`` as one autoregressive sequence (each position
  predicts the next), used only when it has at least two items;
- valid: input ``x_1 .. x_{n-2}``, target ``x_{n-1}``;
- test:  input ``x_1 .. x_{n-1}``, target ``x_n``.

Users with fewer than three items are left out of all three (they cannot give
a validation and a test target), and counted in ``dropped_users``.

With ``max_len`` each input keeps only its most recent ``max_len`` items; a
train sequence keeps ``max_len + 1`` so that all ``max_len`` input positions
have a target. Evaluation examples also carry the untruncated ``history``,
so that ranking can exclude every item the user has already seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jagged_array import JaggedArray
from .store import SequenceData


@dataclass(frozen=True)
class SequenceExamples:
    """One split: a jagged input sequence per example, and a target where evaluated."""

    user_ids: np.ndarray
    item_ids: JaggedArray
    timestamps: JaggedArray | None = None
    targets: np.ndarray | None = None  # next item for evaluation examples
    target_timestamps: np.ndarray | None = None  # when the target happened (HSTU time bias)
    history: JaggedArray | None = None  # untruncated input, for excluding seen items at ranking

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, rows: np.ndarray) -> SequenceExamples:
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return SequenceExamples(
            user_ids=self.user_ids[rows],
            item_ids=self.item_ids.take(rows),
            timestamps=None if self.timestamps is None else self.timestamps.take(rows),
            targets=pick(self.targets),
            target_timestamps=pick(self.target_timestamps),
            history=None if self.history is None else self.history.take(rows),
        )


@dataclass(frozen=True)
class LeaveOneOutSplit:
    train: SequenceExamples
    valid: SequenceExamples
    test: SequenceExamples
    dropped_users: int


def _last(jagged: JaggedArray, back: int) -> np.ndarray:
    """Value ``back`` places from the end of every row (rows must be long enough)."""
    return jagged.values[jagged.offsets[1:] - back]


def _examples(
    data: SequenceData, rows: np.ndarray, drop_last: int, keep_last: int | None, with_target: bool
):
    items = data.item_ids.take(rows)
    times = None if data.timestamps is None else data.timestamps.take(rows)
    return SequenceExamples(
        user_ids=data.user_ids[rows],
        item_ids=items.window(drop_last, keep_last),
        timestamps=None if times is None else times.window(drop_last, keep_last),
        targets=_last(items, drop_last) if with_target else None,
        target_timestamps=_last(times, drop_last) if with_target and times is not None else None,
        history=items.window(drop_last, None) if with_target else None,
    )


def leave_one_out(data: SequenceData, max_len: int | None = None) -> LeaveOneOutSplit:
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    lengths = data.item_ids.lengths
    eligible = np.flatnonzero(lengths >= 3)
    trainable = eligible[lengths[eligible] >= 4]  # train part x_1..x_{n-2} needs >= 2 items
    train_keep = None if max_len is None else max_len + 1
    return LeaveOneOutSplit(
        train=_examples(data, trainable, drop_last=2, keep_last=train_keep, with_target=False),
        valid=_examples(data, eligible, drop_last=2, keep_last=max_len, with_target=True),
        test=_examples(data, eligible, drop_last=1, keep_last=max_len, with_target=True),
        dropped_users=int(len(lengths) - len(eligible)),
    )


@dataclass(frozen=True)
class RetrainSplit:
    """Protocol B (eSASRec): train on all but the last item, test on the last."""

    train: SequenceExamples
    test: SequenceExamples
    dropped_users: int  # too short, or whose test item is already in their history


def _target_in_history(examples: SequenceExamples) -> np.ndarray:
    history = examples.history
    rows = np.repeat(np.arange(len(history)), history.lengths)
    hits = history.values == examples.targets[rows]
    return np.bincount(rows[hits], minlength=len(history)) > 0


def retrain_split(data: SequenceData, max_len: int | None = None) -> RetrainSplit:
    """Train sequences ``x_1..x_{n-1}``; test input ``x_1..x_{n-1}``, target ``x_n``.

    Same users as ``leave_one_out`` (n >= 3), minus those whose last item
    already occurs earlier in their sequence, as the eSASRec protocol does.
    """
    lengths = data.item_ids.lengths
    eligible = np.flatnonzero(lengths >= 3)
    test = _examples(data, eligible, drop_last=1, keep_last=max_len, with_target=True)
    test = test.take(np.flatnonzero(~_target_in_history(test)))
    train_keep = None if max_len is None else max_len + 1
    return RetrainSplit(
        train=_examples(data, eligible, drop_last=1, keep_last=train_keep, with_target=False),
        test=test,
        dropped_users=int(len(lengths) - len(test)),
    )
