"""A trained recommender as an MLflow pyfunc: user histories in, top-k items out.

    model = mlflow.pyfunc.load_model("models:/hstu-synthetic@champion")
    model.predict(pd.DataFrame({"history": [[3, 17, 42], [8]]}), params={"k": 10})
    # -> DataFrame with "items" (k ids, best first) and "scores" per user

Loading needs no Ray and no cluster: the artifacts are the raw weights
(``model.safetensors``), the experiment config (``config.yaml``) and the item
ids that may be recommended (``candidates.npy``: ids seen in the data).
Imports only torch and ``recsys``; nothing here may import Ray.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.models import infer_signature

from recsys.config import to_dict
from recsys.experiment import ExperimentConfig
from recsys.model_files import CANDIDATES, CONFIG, WEIGHTS, load_recommender

DEFAULT_K = 10
# Forward passes per predict call are chunked so a large request does not build one huge batch.
_CHUNK = 512


class SequentialRecommenderModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[history, (timestamps)], params={"k", "exclude_history"})``."""

    # Inputs are checked against the logged signature; MLflow's type-hint validation
    # has no type for a column of variable-length lists (and warns on every import).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.config = load_recommender(
            context.artifacts[WEIGHTS], context.artifacts[CONFIG]
        )
        num_ids = self.model.item_embeddings.num_item_ids
        candidates = torch.from_numpy(np.load(context.artifacts[CANDIDATES]))
        self.blocked = torch.ones(num_ids, dtype=torch.bool)
        self.blocked[candidates] = False
        with torch.no_grad():
            self.items = self.model.item_vectors(torch.arange(num_ids))

    def predict(self, context, model_input, params=None):
        params = params or {}
        k = int(params.get("k", DEFAULT_K))
        exclude = bool(params.get("exclude_history", True))
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        histories = [np.asarray(h, dtype=np.int64) for h in frame["history"]]
        times = frame.get("timestamps")
        use_time = times is not None and self.config.model.family == "hstu"
        items, scores = [], []
        for start in range(0, len(histories), _CHUNK):
            chunk = histories[start : start + _CHUNK]
            chunk_times = list(times[start : start + _CHUNK]) if use_time else None
            top_scores, top_items = self._top_k(chunk, chunk_times, k, exclude)
            items += top_items.tolist()
            scores += top_scores.tolist()
        return pd.DataFrame({"items": items, "scores": scores})

    @torch.no_grad()
    def _top_k(self, histories, times, k, exclude):
        num_ids = self.items.shape[0]
        max_len = self.config.data.max_len
        # The model saw at most max_len recent items per user in training; so it does here.
        recent = [h[-max_len:] for h in histories]
        lengths = torch.tensor([len(h) for h in recent])
        if (lengths == 0).any():
            raise ValueError("every history needs at least one item")
        if any(h.min() < 1 or h.max() >= num_ids for h in recent):
            raise ValueError(f"item ids must be in 1..{num_ids - 1}")
        offsets = torch.zeros(len(recent) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.from_numpy(np.concatenate(recent))
        timestamps = None
        if times is not None:
            timestamps = torch.from_numpy(
                np.concatenate([np.asarray(t, dtype=np.int64)[-max_len:] for t in times])
            )
        users = self.model.user_vectors(values, offsets, timestamps)
        logits = (users @ self.items.T).masked_fill(self.blocked, -math.inf)
        if exclude:
            for row, history in enumerate(histories):
                logits[row, torch.from_numpy(history)] = -math.inf
        top = torch.topk(logits, min(k, num_ids), dim=1)
        return top.values, top.indices


def signature_example(k: int = DEFAULT_K):
    """Input/output example and signature (with the ``k`` and ``exclude_history`` params)."""
    example = pd.DataFrame({"history": [[1, 2, 3], [4, 5]]})
    output = pd.DataFrame({"items": [[1] * k, [2] * k], "scores": [[0.5] * k, [0.5] * k]})
    signature = infer_signature(example, output, params={"k": DEFAULT_K, "exclude_history": True})
    return example, signature


_REPO_ROOT = Path(__file__).resolve().parents[1]
# Shipped inside the logged model, so that it loads where this repository is not installed.
MODEL_CODE = [str(_REPO_ROOT / name) for name in ("recsys", "kernels", "pipelines")]
# Listed rather than inferred: inference would load the model in a subprocess, and
# torchrec must be installed --no-deps next to fbgemm-gpu-cpu (see infra/install.sh).
MODEL_REQUIREMENTS = [
    "torch==2.13.0",
    "fbgemm-gpu-cpu==1.8.0",
    "torchrec==1.8.0",
    "mlflow==3.17.2",
    "safetensors",
    "pyyaml",
    "pandas",
    "numpy",
    "pyarrow",
]


def log_model(weights: Path, experiment: ExperimentConfig, candidates: torch.Tensor, workdir: Path):
    """Log the recommender as a pyfunc named "model" in the active run; returns its ModelInfo."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(experiment), sort_keys=False))
    candidates_file = workdir / "candidates.npy"
    np.save(candidates_file, candidates.numpy())
    example, signature = signature_example()
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=SequentialRecommenderModel(),
        artifacts={
            WEIGHTS: str(weights),
            CONFIG: str(config_file),
            CANDIDATES: str(candidates_file),
        },
        code_paths=MODEL_CODE,
        pip_requirements=MODEL_REQUIREMENTS,
        signature=signature,
        input_example=example,
    )
