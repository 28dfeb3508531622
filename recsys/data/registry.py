"""The datasets ``prepare`` knows: where their files come from and who reads them.

Checksums are sha256 of each file's decompressed content (the same values as
``../shared/data/*/SHA256SUMS``); archives carry the md5 their publisher
quotes. ``ratings.dat`` of ML-1M has no sha256 here because no trusted copy
of it was available to hash; the archive md5 covers it on download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .readers import amazon, movielens, synthetic
from .sources import Download, RawFile, SourceSpec

_S3REC_DATA = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data"
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    licence: str
    source: SourceSpec | None  # None: generated, nothing to read
    prepare: Callable[..., dict]
    options: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="amazon-beauty",
            description="Amazon Beauty 5-core, S3-Rec preprocessing (22,363 users, 12,101 items)",
            licence="Amazon review data (McAuley, UCSD): research use only",
            source=SourceSpec(
                files=(
                    RawFile(
                        "Beauty.txt",
                        "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                    ),
                    RawFile(
                        "Beauty_item2attributes.json",
                        "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
                    ),
                ),
                downloads=(
                    Download(f"{_S3REC_DATA}/Beauty.txt"),
                    Download(f"{_S3REC_DATA}/Beauty_item2attributes.json"),
                ),
            ),
            prepare=partial(
                amazon.prepare,
                sequences_file="Beauty.txt",
                attributes_file="Beauty_item2attributes.json",
            ),
        ),
        DatasetSpec(
            name="ml-100k",
            description="MovieLens 100K (943 users, 1,682 movies, 100,000 ratings with timestamps)",
            licence="GroupLens: research use only, no redistribution",
            source=SourceSpec(
                files=(
                    RawFile(
                        "u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
                    ),
                    RawFile(
                        "u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"
                    ),
                    RawFile(
                        "u.user", "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"
                    ),
                    RawFile(
                        "u.genre",
                        "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
                    ),
                ),
                downloads=(
                    Download(
                        f"{_GROUPLENS}/ml-100k.zip",
                        archive_md5="0e33842e24a9c977be4e0107933c0723",
                        member_prefix="ml-100k/",
                    ),
                ),
            ),
            prepare=movielens.prepare_100k,
        ),
        DatasetSpec(
            name="ml-1m",
            description="MovieLens 1M (6,040 users, 3,883 movies, 1,000,209 ratings)",
            licence="GroupLens: research use only, no redistribution",
            source=SourceSpec(
                files=(
                    RawFile(
                        "movies.dat",
                        "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
                    ),
                    RawFile(
                        "users.dat",
                        "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
                    ),
                    RawFile("ratings.dat", None, required=False),
                    RawFile(
                        "ratings.user_movie_rating.dat",
                        "2dad134c8b493373beed8d2a42e18ec2a93606fd957bd76c0bfbdef5c514b985",
                        required=False,
                    ),
                    RawFile(
                        "ratings.timestamp_known.dat",
                        "3cd10f8e48b8dfcd37b2974b255248e3f856e7e4f5c78672cf46822bfee64a0b",
                        required=False,
                    ),
                ),
                downloads=(
                    Download(
                        f"{_GROUPLENS}/ml-1m.zip",
                        archive_md5="c4d9eecfca2ab87c1945afe126590906",
                        member_prefix="ml-1m/",
                    ),
                ),
            ),
            prepare=movielens.prepare_1m,
            options=("ratings",),
        ),
        DatasetSpec(
            name="synthetic",
            description="generated sequences with power-law popularity (the embedded default)",
            licence="generated by this project: no restrictions",
            source=None,
            prepare=synthetic.prepare,
            options=tuple(synthetic.SyntheticConfig.__dataclass_fields__),
        ),
    )
}
