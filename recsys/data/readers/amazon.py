"""Amazon review data in the S3-Rec format (Beauty, Sports, Toys, ...).

``<Name>.txt``: one line per user, ``user_id item_id item_id ...``, items
oldest first, no timestamps. ``<Name>_item2attributes.json``: one JSON object
``{"item_id": [attribute_id, ...]}`` (categories and brand, as anonymous ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError, malformed
from ..sources import open_text
from ..tables import sequences_from_interactions
from .lines import iter_records, parse_int


def read_sequences(path: Path) -> pa.Table:
    users: list[int] = []
    items: list[int] = []
    seen_users: dict[int, int] = {}
    for line_number, fields, line in iter_records(path, " "):
        fields = [field for field in fields if field]
        if len(fields) < 2:
            raise malformed(
                path, line_number, "a user id followed by at least one item id is expected", line
            )
        user = parse_int(fields[0], path, line_number, "user id", line, minimum=1)
        if user in seen_users:
            raise malformed(
                path, line_number, f"user {user} already appeared on line {seen_users[user]}", line
            )
        seen_users[user] = line_number
        for field in fields[1:]:
            items.append(parse_int(field, path, line_number, "item id", line, minimum=1))
            users.append(user)
    return sequences_from_interactions(
        np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    )


def read_item_attributes(path: Path) -> dict[int, list[int]]:
    with open_text(path) as handle:
        text = handle.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}). "
            "The file is damaged; replace it and run prepare again."
        ) from error
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: expected a JSON object mapping item id to a list of attribute ids."
        )
    attributes: dict[int, list[int]] = {}
    for key, values in raw.items():
        if (
            not key.isdigit()
            or int(key) < 1
            or not isinstance(values, list)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise DataError(
                f"{path}: entry {key!r}: expected a positive item id mapped to a list of integer "
                f"attribute ids, found {values!r:.80}. The file is damaged; replace it."
            )
        attributes[int(key)] = values
    return attributes


def prepare(files: dict[str, Path], writer, sequences_file: str, attributes_file: str) -> dict:
    sequences = read_sequences(files[sequences_file])
    attributes = read_item_attributes(files[attributes_file]) if attributes_file in files else {}
    sequence_items = np.unique(sequences.column("item_ids").combine_chunks().values.to_numpy())
    item_ids = np.union1d(
        sequence_items, np.fromiter(attributes, dtype=np.int64, count=len(attributes))
    )
    items = pa.table(
        {
            "item_id": pa.array(item_ids, type=pa.int64()),
            "attribute_ids": pa.array(
                [attributes.get(int(i), []) for i in item_ids], type=pa.list_(pa.int64())
            ),
        }
    )
    writer.write_table("sequences.parquet", sequences)
    writer.write_table("items.parquet", items)
    return {
        "num_items": len(item_ids),
        "has_timestamps": False,
        "has_ratings": False,
        "chronological": "source order (S3-Rec files list each user's items oldest first)",
    }
