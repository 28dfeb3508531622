"""Reading a prepared folder back: manifest, sequences (as jagged arrays), items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .jagged_array import JaggedArray
from .schema import ITEMS_FILE, MANIFEST_FILE, SCHEMA_VERSION, SEQUENCES_FILE, USERS_FILE


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: {folder} is not a prepared dataset (or its preparation did not finish). "
            "Run `python -m recsys.data prepare DATASET --out FOLDER` first."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema version {manifest.get('schema_version')}, this code reads {SCHEMA_VERSION}. "
            "Prepare the dataset again with this version."
        )
    return manifest


@dataclass(frozen=True)
class SequenceData:
    """All users' chronological sequences, held as flat numpy arrays."""

    user_ids: np.ndarray
    item_ids: JaggedArray
    timestamps: JaggedArray | None  # None when any user lacks timestamps
    manifest: dict

    @property
    def num_item_ids(self) -> int:
        """Size of an id-indexed table: ids run 1..max, 0 is padding."""
        return int(self.manifest["max_item_id"]) + 1


def _jagged(column: pa.ChunkedArray) -> JaggedArray:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    # A sliced ListArray's offsets may not start at zero; rebase them.
    return JaggedArray(values[offsets[0] : offsets[-1]], offsets - offsets[0])


def load_sequences(folder: str | Path) -> SequenceData:
    folder = Path(folder)
    manifest = load_manifest(folder)
    return sequences_from_table(pq.read_table(folder / SEQUENCES_FILE), manifest)


def sequences_from_table(table: pa.Table, manifest: dict) -> SequenceData:
    """``SequenceData`` of a ``sequences.parquet`` table or any subset of its rows (e.g. a shard)."""
    timestamps = table.column("timestamps")
    return SequenceData(
        user_ids=table.column("user_id").to_numpy(),
        item_ids=_jagged(table.column("item_ids")),
        timestamps=_jagged(timestamps) if timestamps.null_count == 0 else None,
        manifest=manifest,
    )


def load_items(folder: str | Path) -> pa.Table:
    return pq.read_table(Path(folder) / ITEMS_FILE)


def load_users(folder: str | Path) -> pa.Table | None:
    path = Path(folder) / USERS_FILE
    return pq.read_table(path) if path.exists() else None
