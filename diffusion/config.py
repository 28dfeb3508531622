"""Typed experiment config for diffusion training (YAML + ``key=value`` overrides).

The loader is the platform's generic one (``recsys.config``: unknown keys, wrong
types and impossible values fail at once, naming the dotted key); only the
dataclasses below are diffusion's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    dataset: Literal["fashion-mnist", "synthetic"] = "synthetic"
    # Folder with the IDX files; None: $GENREC_DATA_DIR/fashion-mnist, else the public download.
    source: str | None = None
    pad_to: int | None = None  # 28 -> 32 makes patch 8 (and latent-style sizes) possible
    limit: int | None = None  # first N training images (smoke runs)
    synthetic_size: int = 28
    synthetic_count: int = 2000

    def check(self):
        problems = []
        if self.pad_to is not None and self.pad_to < 28:
            problems.append(("pad_to", f"must be >= 28, got {self.pad_to}"))
        if self.limit is not None and self.limit < 1:
            problems.append(("limit", f"must be >= 1, got {self.limit}"))
        return problems


@dataclass
class ModelConfig:
    kind: Literal["dit", "switch-dit", "moe-dit"] = "dit"
    size: str = "DiT-T/4"  # a diffusion.models size registry name
    # Constructor arguments on top of the size (num_experts, top_k, prior_loss_weight, ...).
    options: dict = field(default_factory=dict)


@dataclass
class ProcessConfig:
    """The forward noising process and what the network predicts."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"  # squaredcos = cosine
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-4  # DiT's constant AdamW rate
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # DiT uses 0.9999 over 400k steps; short runs need a shorter memory
    log_every: int = 20
    sample_every: int = 500  # sample grid PNG (EMA weights)
    checkpoint_every: int = 500
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only; CPU runs stay fp32

    def check(self):
        problems = []
        for key in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if not 0 <= self.ema_decay < 1:
            problems.append(("ema_decay", f"must be in [0, 1), got {self.ema_decay}"))
        if self.learning_rate <= 0:
            problems.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        return problems


@dataclass
class SampleConfig:
    scheduler: Literal["ddpm", "ddim", "dpm-solver"] = "ddim"
    steps: int = 50
    guidance_scale: float = 1.5
    per_class: int = 4  # images per class in the grid


@dataclass
class EvalConfig:
    """Offline FID / KID / accuracy with our own Fashion-MNIST classifier's features."""

    at_steps: list[int] = field(default_factory=list)  # empty: only at the end
    num_samples: int = 1000  # generated images per evaluation (balanced over classes)
    classifier: str | None = None  # folder from `python -m diffusion.evaluation.train_classifier`


@dataclass
class DiffusionExperiment:
    name: str = "dit-demo"
    seed: int = 0
    output_root: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
