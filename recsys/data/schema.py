"""The on-disk format of a prepared dataset (one folder of Parquet + a manifest).

``sequences.parquet``  one row per user, items in chronological order
``items.parquet``      ``item_id`` plus whatever metadata the source has
``users.parquet``      ``user_id`` plus user features, where the source has any
``manifest.json``      source checksums, counts, options, schema version

Item and user ids are the source's own (positive integers); id 0 is never
used, so models can keep it for padding.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

SEQUENCES_FILE = "sequences.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
MANIFEST_FILE = "manifest.json"

SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_ids", pa.list_(pa.int64()), nullable=False),
        # null when the source has no ratings / timestamps for this user
        pa.field("ratings", pa.list_(pa.float32())),
        pa.field("timestamps", pa.list_(pa.int64())),
    ]
)
