"""The typed config of a recommender experiment (data, model, training, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
class ModelConfig:
    """Defaults: the HSTU reference ML-1M config (2 blocks, 1 head, d=50, dropout 0.2)."""

    family: Literal["hstu", "sasrec"] = "hstu"
    embedding_dim: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    attention_dim: int | None = None  # HSTU q/k width per head; None: embedding_dim // num_heads
    linear_dim: int | None = None  # HSTU u/v width per head; None: embedding_dim // num_heads
    ffn_dim: int | None = None  # SASRec feed-forward width; None: embedding_dim
    dropout: float = 0.2
    hstu_alpha: float = 1.0  # scale of QK^T inside SiLU (the reference uses 1)
    hstu_normalizer: Literal["max_len", "length"] = "max_len"  # n in SiLU(.)/n
    position_bias: bool = True  # HSTU relative position bias
    time_bias: bool = True  # HSTU time-gap bias, used only when the data has timestamps
    time_buckets: int = 128
    # kernels.hstu_attention implementation: auto picks Triton on CUDA, the jagged CPU path otherwise
    attention_impl: Literal["auto", "reference", "cpu", "triton"] = "auto"
    # Target-aware ranking head (MLP d -> d -> 1 on a candidate appended to the history),
    # trained by an auxiliary listwise loss; what serving's /rank scores with.
    ranking_head: bool = False
    ranking_weight: float = 1.0  # weight of the ranking loss added to the next-item loss
    # Negatives per sequence in the ranking loss: the first ones of the batch's sampled
    # negatives (at most train.num_negatives) or, with the in-batch loss, the next
    # sequences' last items (at most batch size - 1).
    ranking_negatives: int = 32

    def check(self):
        problems = []
        for key in ("embedding_dim", "num_blocks", "num_heads", "time_buckets"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be >= 1, got {getattr(self, key)}"))
        for key in ("attention_dim", "linear_dim", "ffn_dim"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append((key, f"must be >= 1 or null, got {getattr(self, key)}"))
        if self.num_heads > self.embedding_dim:
            problems.append(
                ("num_heads", f"{self.num_heads} heads exceed embedding_dim {self.embedding_dim}")
            )
        elif self.embedding_dim % self.num_heads and (
            self.family == "sasrec" or self.attention_dim is None or self.linear_dim is None
        ):
            problems.append(
                (
                    "num_heads",
                    f"embedding_dim {self.embedding_dim} is not divisible by {self.num_heads} heads",
                )
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not self.ranking_weight > 0:
            problems.append(("ranking_weight", f"must be > 0, got {self.ranking_weight}"))
        if self.ranking_negatives < 1:
            problems.append(("ranking_negatives", f"must be >= 1, got {self.ranking_negatives}"))
        return problems


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    loss: Literal["sampled_softmax", "in_batch"] = "sampled_softmax"
    num_negatives: int = 128
    shared_negatives: bool = False  # one negative set per batch instead of per position (faster)
    temperature: float = 0.05
    logq_correction: bool = True  # in-batch loss only
    bucket_by_length: bool = True  # batch sequences of similar length together
    patience: int | None = None  # stop after this many evaluations without improvement
    select_metric: str = "ndcg@10"  # validation metric that chooses the epoch
    max_steps: int | None = None  # cap per epoch (smoke tests)
    device: str = "auto"

    def check(self):
        problems = []
        for key in ("epochs", "batch_size", "num_negatives"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.learning_rate <= 0:
            problems.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        if self.temperature <= 0:
            problems.append(("temperature", f"must be > 0, got {self.temperature}"))
        if self.patience is not None and self.patience < 1:
            problems.append(("patience", f"must be >= 1 or null, got {self.patience}"))
        return problems


@dataclass
class EvalConfig:
    # A: pick the epoch on the second-to-last item, test that model on the last (S3-Rec, BSARec).
    # B: pick the epoch count as in A, retrain on all but the last item for that many
    #    epochs, test on it, dropping users whose test item is already in their history (eSASRec).
    protocol: Literal["A", "B"] = "A"
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
class ShardingConfig:
    """How the item table is placed when training on several ranks (TorchRec planner)."""

    # Allowed sharding types for the planner; on CPU an EmbeddingCollection allows all four.
    types: list[Literal["table_wise", "column_wise", "row_wise", "data_parallel"]] = field(
        default_factory=lambda: ["table_wise", "column_wise", "row_wise"]
    )


@dataclass
class ExperimentConfig:
    name: str = "demo"
    seed: int = 0
    output_root: str = "runs"  # run folders go to <output_root>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def check(self):
        metric = self.train.select_metric
        known = {f"{name}@{k}" for name in ("hr", "ndcg") for k in self.eval.ks} | {"mrr"}
        if metric not in known:
            return [
                (
                    "train.select_metric",
                    f"{metric!r} is not computed; choose one of {sorted(known)}",
                )
            ]
        return []
