"""Leave-one-out splits: exact positions, no leakage, truncation, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import JaggedArray, SequenceData, leave_one_out, load_sequences


def _toy() -> SequenceData:
    rows = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10], [11, 12, 13, 14]]
    items = JaggedArray.from_rows(rows)
    times = JaggedArray.from_rows([[10 * x for x in row] for row in rows])
    return SequenceData(np.array([1, 2, 3, 4]), items, times, {"max_item_id": 14})


def _rows(jagged):
    return [jagged.row(i).tolist() for i in range(len(jagged))]


def test_toy_split_exact():
    split = leave_one_out(_toy())
    assert split.dropped_users == 1  # user 3 has two items: no valid and test target
    assert split.train.user_ids.tolist() == [1, 4]  # user 2's train part is one item
    assert _rows(split.train.item_ids) == [[1, 2, 3], [11, 12]]
    assert split.valid.user_ids.tolist() == [1, 2, 4]
    assert _rows(split.valid.item_ids) == [[1, 2, 3], [6], [11, 12]]
    assert split.valid.targets.tolist() == [4, 7, 13]
    assert _rows(split.test.item_ids) == [[1, 2, 3, 4], [6, 7], [11, 12, 13]]
    assert split.test.targets.tolist() == [5, 8, 14]
    assert split.test.target_timestamps.tolist() == [50, 80, 140]
    assert _rows(split.test.timestamps) == [[10, 20, 30, 40], [60, 70], [110, 120, 130]]


def test_toy_split_truncates_to_most_recent():
    split = leave_one_out(_toy(), max_len=2)
    assert _rows(split.test.item_ids) == [[3, 4], [6, 7], [12, 13]]
    assert _rows(split.valid.item_ids) == [[2, 3], [6], [11, 12]]
    assert _rows(split.train.item_ids) == [[1, 2, 3], [11, 12]]  # max_len + 1 for next-item targets
    with pytest.raises(ValueError):
        leave_one_out(_toy(), max_len=0)


@pytest.mark.shared_data
@pytest.mark.parametrize("max_len", [None, 50])
def test_beauty_split_has_no_leakage(prepared, max_len):
    data = load_sequences(prepared("amazon-beauty"))
    split = leave_one_out(data, max_len=max_len)
    assert split.dropped_users == 0 and len(split.test) == len(split.valid) == 22_363
    full = {int(u): data.item_ids.row(i) for i, u in enumerate(data.user_ids)}
    train = {int(u): split.train.item_ids.row(i) for i, u in enumerate(split.train.user_ids)}
    for i, user in enumerate(split.test.user_ids.tolist()):
        items = full[user]
        assert split.test.targets[i] == items[-1] and split.valid.targets[i] == items[-2]
        expected_test = items[:-1] if max_len is None else items[:-1][-max_len:]
        assert np.array_equal(split.test.item_ids.row(i), expected_test)
        if user in train:  # the train part never reaches the validation or test position
            assert np.array_equal(
                train[user], items[:-2] if max_len is None else items[:-2][-(max_len + 1) :]
            )
    again = leave_one_out(data, max_len=max_len)
    assert np.array_equal(again.train.item_ids.values, split.train.item_ids.values)
