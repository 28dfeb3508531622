"""A minimal numpy container for ragged rows: flat ``values`` plus ``offsets``.

Row ``i`` is ``values[offsets[i]:offsets[i + 1]]``. This is the host-side form
of a dataset (cheap to slice, shard and save); batches become TorchRec
``JaggedTensor``s only when they are handed to a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JaggedArray:
    values: np.ndarray
    offsets: np.ndarray  # int64, len = rows + 1, offsets[0] == 0

    def __post_init__(self):
        if self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D and start at 0")
        if self.offsets[-1] != len(self.values):
            raise ValueError(
                f"offsets end at {self.offsets[-1]} but there are {len(self.values)} values"
            )

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> JaggedArray:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.asarray(values), offsets)

    @classmethod
    def from_rows(cls, rows: list, dtype=np.int64) -> JaggedArray:
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        values = (
            np.concatenate([np.asarray(row, dtype=dtype) for row in rows])
            if rows
            else np.zeros(0, dtype)
        )
        return cls.from_lengths(values.astype(dtype), lengths)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def take(self, rows: np.ndarray) -> JaggedArray:
        """The given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.slice_rows(rows, self.offsets[rows], self.offsets[rows + 1])

    def slice_rows(self, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> JaggedArray:
        """For each selected row, keep the absolute value range [start, stop)."""
        lengths = np.maximum(stops - starts, 0)
        out = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        gather = np.repeat(starts - out[:-1], lengths) + np.arange(out[-1])
        return JaggedArray(self.values[gather], out)

    def window(self, drop_last: int, keep_last: int | None) -> JaggedArray:
        """Every row without its last ``drop_last`` values, then its ``keep_last`` most recent."""
        stops = np.maximum(self.offsets[1:] - drop_last, self.offsets[:-1])
        starts = (
            self.offsets[:-1]
            if keep_last is None
            else np.maximum(stops - keep_last, self.offsets[:-1])
        )
        return self.slice_rows(np.arange(len(self)), starts, stops)
