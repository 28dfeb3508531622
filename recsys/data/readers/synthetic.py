"""A generated interaction log: the embedded default and the input for scale tests.

Item popularity follows a power law (p(rank r) ~ r^-exponent). Sequences have
learnable structure, so a model can beat popularity: every item belongs to a
category and has a few "successor" items in the same category; each next item
is, with probability ``transition_prob``, one of the previous item's successors,
otherwise a popularity draw. Lengths are ``min_length`` plus a geometric draw
with the requested mean, capped at ``max_length``.

Users are generated and written in chunks of about ``chunk_events`` events, so
memory stays bounded whatever the total (10M events use well under 2 GiB).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..errors import DataError
from ..schema import SEQUENCES_SCHEMA
from ..tables import list_column

_START_TIME = 1_700_000_000  # 2023-11-14, an arbitrary fixed epoch for reproducibility
_SUCCESSORS_PER_ITEM = 4


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 20_000
    num_items: int = 5_000
    mean_length: float = 25.0
    min_length: int = 5
    max_length: int = 500
    popularity_exponent: float = 1.0
    num_categories: int = 50
    transition_prob: float = 0.6
    seed: int = 0
    chunk_events: int = 2_000_000

    def validate(self) -> None:
        problems = []
        if self.num_users < 1:
            problems.append(f"num_users must be >= 1, got {self.num_users}")
        if self.num_items < 2:
            problems.append(f"num_items must be >= 2, got {self.num_items}")
        if self.min_length < 1:
            problems.append(f"min_length must be >= 1, got {self.min_length}")
        if not self.min_length <= self.mean_length <= self.max_length:
            problems.append(
                f"need min_length <= mean_length <= max_length, got {self.min_length}, "
                f"{self.mean_length}, {self.max_length}"
            )
        if self.popularity_exponent < 0:
            problems.append(f"popularity_exponent must be >= 0, got {self.popularity_exponent}")
        if not 1 <= self.num_categories <= self.num_items:
            problems.append(f"num_categories must be in [1, num_items], got {self.num_categories}")
        if not 0.0 <= self.transition_prob <= 1.0:
            problems.append(f"transition_prob must be in [0, 1], got {self.transition_prob}")
        if self.chunk_events < self.max_length:
            problems.append(f"chunk_events must be >= max_length, got {self.chunk_events}")
        if problems:
            raise DataError("synthetic: " + "; ".join(problems) + ".")


def _item_catalogue(config: SyntheticConfig, rng: np.random.Generator):
    """Popularity, category and successors of every item (ids 1..num_items)."""
    n = config.num_items
    ranks = rng.permutation(n) + 1  # item i's popularity rank
    popularity = ranks.astype(np.float64) ** -config.popularity_exponent
    popularity /= popularity.sum()
    categories = rng.integers(0, config.num_categories, size=n)
    successors = np.empty((n, _SUCCESSORS_PER_ITEM), dtype=np.int64)
    for category in range(config.num_categories):
        members = np.flatnonzero(categories == category)
        if len(members) == 0:
            continue
        weights = popularity[members] / popularity[members].sum()
        successors[members] = rng.choice(
            members, size=(len(members), _SUCCESSORS_PER_ITEM), p=weights
        )
    return popularity, categories, successors


def _lengths(config: SyntheticConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    extra_mean = config.mean_length - config.min_length
    extra = (
        rng.geometric(1.0 / (extra_mean + 1.0), size=count) - 1
        if extra_mean > 0
        else np.zeros(count, int)
    )
    return np.minimum(config.min_length + extra, config.max_length).astype(np.int64)


def _chunk_bounds(lengths: np.ndarray, chunk_events: int):
    """Split users into consecutive chunks of at most ``chunk_events`` events."""
    start, total = 0, 0
    for index, length in enumerate(lengths):
        if total + length > chunk_events and index > start:
            yield start, index
            start, total = index, 0
        total += length
    yield start, len(lengths)


def _generate_items(lengths, popularity, successors, transition_prob, rng) -> np.ndarray:
    """Flat item array for users with these lengths, one position at a time."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.empty(offsets[-1], dtype=np.int64)
    cumulative = np.cumsum(popularity)
    cumulative[-1] = 1.0
    active = np.arange(len(lengths))
    previous = np.zeros(len(lengths), dtype=np.int64)  # each user's last item so far
    for position in range(int(lengths.max(initial=0))):
        active = active[lengths[active] > position]  # users still generating
        draws = np.searchsorted(cumulative, rng.random(len(active)), side="right")
        if position > 0:
            follow = rng.random(len(active)) < transition_prob
            choice = rng.integers(0, successors.shape[1], size=len(active))
            draws = np.where(follow, successors[previous[active], choice], draws)
        items[offsets[active] + position] = draws
        previous[active] = draws
    return items + 1  # ids start at 1; 0 stays free for padding


def prepare(files, writer, **options) -> dict:
    del files  # generated, nothing to read
    try:
        config = SyntheticConfig(**options)
    except TypeError as error:
        known = ", ".join(SyntheticConfig.__dataclass_fields__)
        raise DataError(f"synthetic: {error}; known options are {known}.") from None
    config.validate()
    rng = np.random.default_rng(config.seed)
    popularity, categories, successors = _item_catalogue(config, rng)
    lengths = _lengths(config, config.num_users, rng)

    with (
        writer.open_parquet("sequences.parquet", SEQUENCES_SCHEMA) as parquet,
        tqdm(
            total=int(lengths.sum()),
            unit="event",
            desc="synthetic",
            unit_scale=True,
            mininterval=1.0,
        ) as progress,
    ):
        for start, stop in _chunk_bounds(lengths, config.chunk_events):
            chunk_lengths = lengths[start:stop]
            offsets = np.concatenate([[0], np.cumsum(chunk_lengths)])
            items = _generate_items(
                chunk_lengths, popularity, successors, config.transition_prob, rng
            )
            gaps = rng.exponential(6 * 3600.0, size=len(items)).astype(np.int64) + 1
            first = _START_TIME + rng.integers(0, 365 * 86400, size=len(chunk_lengths))
            times = np.cumsum(gaps)
            times = times - np.repeat(
                times[offsets[:-1]] - first, chunk_lengths
            )  # restart per user
            table = pa.table(
                {
                    "user_id": pa.array(np.arange(start + 1, stop + 1, dtype=np.int64)),
                    "item_ids": list_column(items, offsets, pa.int64()),
                    "ratings": pa.nulls(len(chunk_lengths), pa.list_(pa.float32())),
                    "timestamps": list_column(times, offsets, pa.int64()),
                },
                schema=SEQUENCES_SCHEMA,
            )
            parquet.write_table(table)
            progress.update(len(items))
    writer.row_counts["sequences.parquet"] = config.num_users

    items_table = pa.table(
        {
            "item_id": pa.array(np.arange(1, config.num_items + 1, dtype=np.int64)),
            "category_ids": list_column(
                categories.astype(np.int64), np.arange(config.num_items + 1), pa.int64()
            ),
            "popularity": pa.array(popularity.astype(np.float32)),
        }
    )
    writer.write_table("items.parquet", items_table)
    return {
        "num_items": config.num_items,
        "has_timestamps": True,
        "has_ratings": False,
        "chronological": "generated in time order",
        "generator": asdict(config),
    }
