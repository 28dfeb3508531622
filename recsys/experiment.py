"""The typed config of a recommender experiment (data, model, training, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.registry import DATASETS


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    # Raw files; None: $GENREC_DATA_DIR/<dataset> if set, else the public download.
    source: str | None = None
    # Where the Parquet folder goes; None: <output_root>/data/<dataset>.
    prepared_dir: str | None = None
    options: dict = field(
        default_factory=dict
    )  # dataset options (see `python -m recsys.data list`)
    max_len: int = 200  # most recent items a model sees

    def check(self):
        problems = []
        if self.dataset not in DATASETS:
            problems.append(
                ("dataset", f"{self.dataset!r} is unknown; choose one of {list(DATASETS)}")
            )
        if self.max_len < 1:
            problems.append(("max_len", f"must be >= 1, got {self.max_len}"))
        return problems


@dataclass
class EvalConfig:
    batch_size: int = 1024
    exclude_history: bool = True  # remove already-seen items from the ranking
    ks: list[int] = field(default_factory=lambda: [10, 50, 200])

    def check(self):
        if self.batch_size < 1:
            return [("batch_size", f"must be >= 1, got {self.batch_size}")]
        if not self.ks or min(self.ks) < 1:
            return [("ks", f"must be a non-empty list of positive cut-offs, got {self.ks}")]
        return []


@dataclass
class ExperimentConfig:
    name: str = "demo"
    seed: int = 0
    output_root: str = "runs"  # run folders go to <output_root>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
