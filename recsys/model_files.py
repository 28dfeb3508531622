"""The files a trained recommender is made of, shared by whoever writes or reads them.

A model is three files: the weights (``model.safetensors``), the experiment
config (``config.yaml``, or ``model-config.yaml`` inside an MLflow model) and
the item ids it may recommend (``candidates.npy``: ids seen in the data). The
MLflow pyfunc (pipelines) and the Ray Serve app (serving) both go through here,
so neither depends on the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .config import load_config
from .experiment import ExperimentConfig

# Keys of the pyfunc's ``artifacts`` mapping (MLmodel -> flavors.python_function.artifacts).
WEIGHTS, CONFIG, CANDIDATES = "weights", "config", "candidates"
ITEM_TABLE_KEY = "item_embeddings.collection.embeddings.item_table.weight"


def load_recommender(weights: str | Path, config: str | Path):
    """(model in eval mode, its ExperimentConfig) from the weights and config files."""
    from .train import build_model  # here: train imports the data stack, loading needs none of it

    experiment = load_config(ExperimentConfig, config)
    state = load_file(str(weights))
    if ITEM_TABLE_KEY not in state:
        raise ValueError(f"{weights} holds no item table ({ITEM_TABLE_KEY}): not a recommender")
    model = build_model(experiment, state[ITEM_TABLE_KEY].shape[0])
    model.load_state_dict(state)
    return model.eval(), experiment


def load_candidates(path: str | Path | None, num_item_ids: int) -> torch.Tensor:
    """Item ids that may be recommended; every real id (1..n-1) when the file is missing."""
    if path is None or not Path(path).exists():
        return torch.arange(1, num_item_ids)
    return torch.from_numpy(np.load(path)).long()
