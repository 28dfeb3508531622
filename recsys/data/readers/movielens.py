"""MovieLens 100K and 1M in their original GroupLens formats.

ML-1M note: the byte-exact ``ratings.dat`` is used when present. Without it,
``../shared/data/ml-1m`` holds a reconstruction: every rating without a time
(``ratings.user_movie_rating.dat``) and the 87% of rows whose timestamp is
known (``ratings.timestamp_known.dat``). Option ``ratings``:

- ``timestamped`` (default): only rows with a timestamp, each user's items in
  time order. Faithful order, but it under-samples 1-3 star ratings of users
  3000-6040 (see that folder's README).
- ``all``: all 1,000,209 ratings. Users whose every rating has a time are in
  time order; the others keep the file order, which is *not* chronological,
  and get null ``timestamps``. The manifest counts them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError, malformed
from ..tables import sequences_from_interactions
from .lines import iter_records, parse_float, parse_int

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def _title_year(title: str) -> int | None:
    match = _YEAR_IN_TITLE.search(title)
    return int(match.group(1)) if match else None


def _read_ratings(path: Path, separator: str, with_timestamp: bool):
    """Return (users, items, ratings, timestamps-or-None) as numpy arrays."""
    num_fields = 4 if with_timestamp else 3
    users, items, ratings, times = [], [], [], []
    for line_number, fields, line in iter_records(path, separator, num_fields):
        users.append(parse_int(fields[0], path, line_number, "user id", line, minimum=1))
        items.append(parse_int(fields[1], path, line_number, "item id", line, minimum=1))
        ratings.append(parse_float(fields[2], path, line_number, "rating", line))
        if with_timestamp:
            times.append(parse_int(fields[3], path, line_number, "timestamp", line, minimum=0))
    as_int = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return (
        as_int(users),
        as_int(items),
        np.asarray(ratings, dtype=np.float32),
        as_int(times) if with_timestamp else None,
    )


# ----------------------------------------------------------------- ML-100K ---


def _read_100k_genres(path: Path) -> list[str]:
    genres: dict[int, str] = {}
    for line_number, fields, line in iter_records(path, "|", 2, encoding="latin-1"):
        genres[parse_int(fields[1], path, line_number, "genre id", line, minimum=0)] = fields[0]
    return [genres[i] for i in sorted(genres)]


def _read_100k_items(path: Path, genre_names: list[str]) -> pa.Table:
    rows = {"item_id": [], "title": [], "year": [], "release_date": [], "genres": []}
    num_fields = 5 + len(genre_names)
    for line_number, fields, line in iter_records(path, "|", num_fields, encoding="latin-1"):
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise malformed(path, line_number, "genre flags must be 0 or 1", line)
        release = fields[2]
        rows["item_id"].append(parse_int(fields[0], path, line_number, "item id", line, minimum=1))
        rows["title"].append(fields[1])
        rows["year"].append(int(release[-4:]) if release[-4:].isdigit() else _title_year(fields[1]))
        rows["release_date"].append(release or None)
        rows["genres"].append(
            [name for name, flag in zip(genre_names, flags, strict=True) if flag == "1"]
        )
    return pa.table(rows, schema=_ITEM_SCHEMA_100K)


_ITEM_SCHEMA_100K = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("year", pa.int32()),
        ("release_date", pa.string()),
        ("genres", pa.list_(pa.string())),
    ]
)


def _read_100k_users(path: Path) -> pa.Table:
    rows = {"user_id": [], "age": [], "gender": [], "occupation": [], "zip_code": []}
    for line_number, fields, line in iter_records(path, "|", 5, encoding="latin-1"):
        rows["user_id"].append(parse_int(fields[0], path, line_number, "user id", line, minimum=1))
        rows["age"].append(parse_int(fields[1], path, line_number, "age", line, minimum=0))
        rows["gender"].append(fields[2])
        rows["occupation"].append(fields[3])
        rows["zip_code"].append(fields[4])
    return pa.table(rows).cast(
        pa.schema(
            [
                ("user_id", pa.int64()),
                ("age", pa.int32()),
                ("gender", pa.string()),
                ("occupation", pa.string()),
                ("zip_code", pa.string()),
            ]
        )
    )


def prepare_100k(files: dict[str, Path], writer) -> dict:
    users, items, ratings, times = _read_ratings(files["u.data"], "\t", with_timestamp=True)
    _check_duplicates(files["u.data"], users, items)
    sequences = sequences_from_interactions(users, items, times, ratings)
    item_table = _read_100k_items(files["u.item"], _read_100k_genres(files["u.genre"]))
    writer.write_table("sequences.parquet", sequences)
    writer.write_table("items.parquet", item_table)
    writer.write_table("users.parquet", _read_100k_users(files["u.user"]))
    return {
        "num_items": item_table.num_rows,
        "has_timestamps": True,
        "has_ratings": True,
        "chronological": "sorted by timestamp; ties keep u.data order",
    }


# ------------------------------------------------------------------- ML-1M ---

ML1M_RATING_CHOICES = ("timestamped", "all")


def _read_1m_movies(path: Path) -> pa.Table:
    rows = {"item_id": [], "title": [], "year": [], "genres": []}
    for line_number, fields, line in iter_records(path, "::", 3, encoding="latin-1"):
        rows["item_id"].append(parse_int(fields[0], path, line_number, "movie id", line, minimum=1))
        rows["title"].append(fields[1])
        rows["year"].append(_title_year(fields[1]))
        rows["genres"].append(fields[2].split("|") if fields[2] else [])
    return pa.table(rows).cast(
        pa.schema(
            [
                ("item_id", pa.int64()),
                ("title", pa.string()),
                ("year", pa.int32()),
                ("genres", pa.list_(pa.string())),
            ]
        )
    )


def _read_1m_users(path: Path) -> pa.Table:
    rows = {"user_id": [], "gender": [], "age": [], "occupation": [], "zip_code": []}
    for line_number, fields, line in iter_records(path, "::", 5, encoding="latin-1"):
        rows["user_id"].append(parse_int(fields[0], path, line_number, "user id", line, minimum=1))
        rows["gender"].append(fields[1])
        rows["age"].append(parse_int(fields[2], path, line_number, "age group", line, minimum=0))
        rows["occupation"].append(
            parse_int(fields[3], path, line_number, "occupation", line, minimum=0)
        )
        rows["zip_code"].append(fields[4])
    return pa.table(rows).cast(
        pa.schema(
            [
                ("user_id", pa.int64()),
                ("gender", pa.string()),
                ("age", pa.int32()),
                ("occupation", pa.int32()),
                ("zip_code", pa.string()),
            ]
        )
    )


def _check_duplicates(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    pairs = users * (int(items.max(initial=0)) + 1) + items
    unique, first_index, counts = np.unique(pairs, return_index=True, return_counts=True)
    if len(unique) != len(pairs):
        row = int(first_index[np.argmax(counts > 1)])
        raise DataError(
            f"{path}: user {users[row]} rated item {items[row]} more than once. The file is not the "
            "original; replace it and run prepare again."
        )


def _ml1m_sequences(files: dict[str, Path], ratings_choice: str) -> tuple[pa.Table, dict]:
    if "ratings.dat" in files:  # the original file: complete and timestamped
        users, items, ratings, times = _read_ratings(
            files["ratings.dat"], "::", with_timestamp=True
        )
        _check_duplicates(files["ratings.dat"], users, items)
        return sequences_from_interactions(users, items, times, ratings), {
            "ratings_source": "ratings.dat (original)",
            "chronological": "sorted by timestamp; ties keep file order",
        }
    needed = ("ratings.user_movie_rating.dat", "ratings.timestamp_known.dat")
    if not all(name in files for name in needed):
        raise DataError(
            "ml-1m needs ratings.dat (the original) or both ratings.user_movie_rating.dat and "
            "ratings.timestamp_known.dat (the reconstruction in ../shared/data/ml-1m); found neither. "
            "Point --source at a folder with one of them."
        )
    t_users, t_items, t_ratings, t_times = _read_ratings(
        files[needed[1]], "::", with_timestamp=True
    )
    _check_duplicates(files[needed[1]], t_users, t_items)
    if ratings_choice == "timestamped":
        return sequences_from_interactions(t_users, t_items, t_times, t_ratings), {
            "ratings_source": f"{needed[1]} (rows with a known timestamp only; see ml-1m README)",
            "chronological": "sorted by timestamp; ties keep file order",
        }
    users, items, ratings, _ = _read_ratings(files[needed[0]], "::", with_timestamp=False)
    _check_duplicates(files[needed[0]], users, items)
    return _ml1m_all_ratings(users, items, ratings, t_users, t_items, t_times)


def _ml1m_all_ratings(users, items, ratings, t_users, t_items, t_times):
    """All ratings; time order only for users whose every rating has a time."""
    key_scale = int(max(items.max(), t_items.max())) + 1
    keys, t_keys = users * key_scale + items, t_users * key_scale + t_items
    order = np.argsort(t_keys)
    position = np.searchsorted(t_keys[order], keys).clip(max=len(t_keys) - 1)
    known = t_keys[order][position] == keys
    times = np.where(known, t_times[order][position], -1)
    complete_users = np.setdiff1d(np.unique(users), np.unique(users[~known]))
    is_complete = np.isin(users, complete_users)
    # Complete users sort by time; the others by file order (their time key is constant).
    sort_times = np.where(is_complete, times, 0)
    table = sequences_from_interactions(users, items, sort_times, ratings)
    # Null out the timestamp list of users whose order is not chronological.
    has_times = np.isin(table.column("user_id").to_numpy(), complete_users)
    timestamps = table.column("timestamps").combine_chunks()
    masked = pa.ListArray.from_arrays(
        timestamps.offsets, timestamps.values, mask=pa.array(~has_times)
    )
    table = table.set_column(table.schema.get_field_index("timestamps"), "timestamps", masked)
    return table, {
        "ratings_source": "ratings.user_movie_rating.dat joined with ratings.timestamp_known.dat",
        "chronological": (
            f"time order for {int(has_times.sum())} users with every timestamp known; "
            f"file order (not chronological) and null timestamps for {int((~has_times).sum())} users"
        ),
        "ratings_without_timestamp": int((~known).sum()),
    }


def prepare_1m(files: dict[str, Path], writer, ratings: str = "timestamped") -> dict:
    if ratings not in ML1M_RATING_CHOICES:
        raise DataError(
            f"ml-1m option ratings={ratings!r} is unknown; choose one of {ML1M_RATING_CHOICES}."
        )
    sequences, notes = _ml1m_sequences(files, ratings)
    movies = _read_1m_movies(files["movies.dat"])
    writer.write_table("sequences.parquet", sequences)
    writer.write_table("items.parquet", movies)
    writer.write_table("users.parquet", _read_1m_users(files["users.dat"]))
    return {"num_items": movies.num_rows, "has_timestamps": True, "has_ratings": True, **notes}
