"""Prepared datasets: exact counts, schema, order and provenance."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data import load_items, load_manifest, load_sequences, load_users, prepare_dataset
from recsys.data.schema import SEQUENCES_SCHEMA

pytestmark = pytest.mark.shared_data


def _assert_chronological(data):
    assert data.timestamps is not None
    diffs = np.diff(data.timestamps.values)
    row_starts = data.timestamps.offsets[1:-1] - 1  # diffs that cross into the next user
    diffs[row_starts[row_starts >= 0]] = 0
    assert (diffs >= 0).all()


def test_amazon_beauty_counts_and_schema(prepared):
    folder = prepared("amazon-beauty")
    manifest = load_manifest(folder)
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (
        22_363,
        12_101,
        198_502,
    )
    assert pq.read_schema(folder / "sequences.parquet").equals(SEQUENCES_SCHEMA)
    data = load_sequences(folder)
    assert len(data.user_ids) == 22_363 and data.timestamps is None
    assert data.item_ids.values.min() >= 1 and data.num_item_ids == 12_102
    items = load_items(folder)
    assert items.num_rows == 12_101 and "attribute_ids" in items.column_names
    assert (
        sum(len(a) for a in items.column("attribute_ids").to_pylist()) > 12_101
    )  # category + brand ids
    assert load_users(folder) is None  # the S3-Rec files have no user features
    assert manifest["sources"]["Beauty.txt"]["sha256"].startswith("226cce9c")


def test_amazon_beauty_keeps_source_order(prepared, shared):
    data = load_sequences(prepared("amazon-beauty"))
    with gzip.open(shared("amazon-beauty") / "Beauty.txt.gz", "rt") as handle:
        user, *items = (int(x) for x in handle.readline().split())
    row = int(np.flatnonzero(data.user_ids == user)[0])
    assert data.item_ids.row(row).tolist() == items


def test_ml100k_counts_features_and_time_order(prepared):
    folder = prepared("ml-100k")
    manifest = load_manifest(folder)
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (
        943,
        1_682,
        100_000,
    )
    data = load_sequences(folder)
    _assert_chronological(data)
    table = pq.read_table(folder / "sequences.parquet")
    assert table.column("ratings").null_count == 0
    assert sorted(set(np.concatenate(table.column("ratings").to_pylist()))) == [1, 2, 3, 4, 5]
    items = load_items(folder).to_pylist()
    toy_story = items[0]
    assert toy_story["title"] == "Toy Story (1995)" and toy_story["year"] == 1995
    assert set(toy_story["genres"]) == {"Animation", "Children's", "Comedy"}
    users = load_users(folder)
    assert users.num_rows == 943 and set(users.column_names) >= {
        "user_id",
        "age",
        "gender",
        "occupation",
    }


def test_ml1m_timestamped_is_chronological(prepared):
    folder = prepared("ml-1m")
    manifest = load_manifest(folder)
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (
        6_040,
        3_883,
        870_802,
    )
    _assert_chronological(load_sequences(folder))
    movies = load_items(folder).to_pylist()
    assert movies[0]["title"] == "Toy Story (1995)" and movies[0]["genres"] == [
        "Animation",
        "Children's",
        "Comedy",
    ]


def test_ml1m_all_ratings_marks_users_without_time_order(prepared):
    folder = prepared("ml-1m", ratings="all")
    manifest = load_manifest(folder)
    assert manifest["num_interactions"] == 1_000_209
    assert manifest["ratings_without_timestamp"] == 129_407
    table = pq.read_table(folder / "sequences.parquet")
    no_time = table.filter(table.column("timestamps").is_null())
    # Every user with a missing timestamp is in 3000-6040 (see the ml-1m README).
    assert no_time.num_rows > 0 and min(no_time.column("user_id").to_pylist()) >= 3000
    assert load_sequences(folder).timestamps is None  # not every user has times


def test_synthetic_is_seeded_and_power_law(tmp_path):
    options = {"num_users": 3_000, "num_items": 800, "mean_length": 12, "seed": 7}
    first = prepare_dataset("synthetic", tmp_path / "a", options=options)
    prepare_dataset("synthetic", tmp_path / "b", options=options)
    prepare_dataset("synthetic", tmp_path / "c", options={**options, "seed": 8})
    read = lambda name: pq.read_table(tmp_path / name / "sequences.parquet")  # noqa: E731
    assert read("a").equals(read("b"))
    assert not read("a").equals(read("c"))
    assert first["num_users"] == 3_000 and first["num_items"] == 800
    assert abs(first["num_interactions"] / 3_000 - 12) < 1.0
    data = load_sequences(tmp_path / "a")
    _assert_chronological(data)
    counts = np.sort(np.bincount(data.item_ids.values))[::-1]
    assert counts[0] > 10 * np.median(counts[counts > 0])  # a head of popular items
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["generator"]["seed"] == 7


def test_synthetic_chunks_stream_to_disk(tmp_path):
    """Many small chunks give several row groups and the same totals."""
    options = {"num_users": 2_000, "num_items": 500, "mean_length": 10, "chunk_events": 2_000}
    manifest = prepare_dataset("synthetic", tmp_path / "s", options=options)
    parquet = pq.ParquetFile(tmp_path / "s" / "sequences.parquet")
    assert parquet.metadata.num_row_groups > 5
    assert parquet.metadata.num_rows == 2_000 == manifest["files"]["sequences.parquet"]["rows"]
