"""Turning flat interaction logs into the per-user sequence table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .schema import SEQUENCES_SCHEMA


def list_column(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type)
    )


def sequences_from_interactions(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray | None = None,
    ratings: np.ndarray | None = None,
) -> pa.Table:
    """Group interactions by user, chronological within each user.

    Rows are ordered by (user, timestamp, position in the source file): ties in
    time keep the source's order, so the result is deterministic. Without
    timestamps the source order is taken as chronological.
    """
    row_order = np.arange(len(user_ids))
    keys = [row_order] + ([timestamps] if timestamps is not None else []) + [user_ids]
    order = np.lexsort(keys)  # last key is the primary one
    users_sorted = user_ids[order]
    unique_users, starts, counts = np.unique(users_sorted, return_index=True, return_counts=True)
    offsets = np.concatenate([starts, [len(order)]]).astype(np.int64)
    assert np.array_equal(np.diff(offsets), counts)
    columns = {
        "user_id": pa.array(unique_users.astype(np.int64)),
        "item_ids": list_column(item_ids[order].astype(np.int64), offsets, pa.int64()),
        "ratings": _optional_list(ratings, order, offsets, pa.float32(), len(unique_users)),
        "timestamps": _optional_list(timestamps, order, offsets, pa.int64(), len(unique_users)),
    }
    return pa.table(columns, schema=SEQUENCES_SCHEMA)


def _optional_list(values, order, offsets, value_type, num_rows) -> pa.Array:
    if values is None:
        return pa.nulls(num_rows, pa.list_(value_type))
    return list_column(np.asarray(values)[order], offsets, value_type)


def length_summary(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0}
    return {
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 3),
        "median": float(np.median(lengths)),
    }
