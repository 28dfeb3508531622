"""MLflow tracking, the recommender pyfunc and the champion alias, on a real local store (no Ray)."""

from __future__ import annotations

import socket

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from pipelines import recsys_model
from pipelines.tracking import (
    CHAMPION_METRIC,
    TrackingError,
    check_tracking_uri,
    metric_key,
    register_model,
    start_run,
)
from recsys.data import JaggedArray, SequenceExamples, SequenceLoader
from recsys.experiment import DataConfig, ExperimentConfig, ModelConfig
from recsys.train import ModelScorer, build_model

NUM_ITEM_IDS = 30
CANDIDATES = torch.arange(1, NUM_ITEM_IDS - 2)  # ids 28 and 29 never occur: never recommended


@pytest.fixture
def store(tmp_path):
    """A sqlite tracking URI in tmp_path; the global MLflow state is restored afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _experiment() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(max_len=8),
        model=ModelConfig(family="hstu", embedding_dim=8, num_blocks=1, num_heads=1, dropout=0.0),
    )


def _log_tiny_model(tmp_path, seed: int = 0):
    experiment = _experiment()
    experiment.seed = seed
    model = build_model(experiment, NUM_ITEM_IDS).eval()
    weights = tmp_path / f"weights-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    info = recsys_model.log_model(weights, experiment, CANDIDATES, tmp_path / f"model-{seed}")
    return model, info


def test_metric_keys_are_valid_mlflow_names():
    assert metric_key("valid", "ndcg@10") == "valid/ndcg_at_10" == CHAMPION_METRIC


def test_pyfunc_loads_in_one_call_and_ranks_like_the_model(tmp_path, store):
    with start_run(store, "unit", "pyfunc", artifact_root=None, tags={}, system_metrics=False):
        model, info = _log_tiny_model(tmp_path)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    histories = [[1, 2, 3], [5], [7, 7, 9, 11, 4, 2, 20, 21, 22, 23, 24]]
    out = loaded.predict(pd.DataFrame({"history": histories}), params={"k": 5})
    assert list(out.columns) == ["items", "scores"] and len(out) == 3

    # The same ranking as the evaluation scorer, history excluded, over the candidates only.
    examples = SequenceExamples(
        user_ids=np.arange(3),
        item_ids=JaggedArray.from_rows([h[-8:] for h in histories]),
    )
    batch = next(iter(SequenceLoader(examples, 3)))
    scores = ModelScorer(model, CANDIDATES, torch.device("cpu"))(batch)
    for row, history in enumerate(histories):
        scores[row, history] = -torch.inf
        expected = torch.topk(scores[row], 5).indices.tolist()
        assert out["items"][row] == expected
        assert not set(out["items"][row]) & set(history)
        assert set(out["items"][row]) <= set(CANDIDATES.tolist())
        assert out["scores"][row] == sorted(out["scores"][row], reverse=True)
    with pytest.raises(Exception, match="item ids must be in"):
        loaded.predict(pd.DataFrame({"history": [[1, NUM_ITEM_IDS]]}))


def _register(tmp_path, store, value: float, seed: int):
    with start_run(store, "unit", f"run-{seed}", artifact_root=None, tags={}, system_metrics=False):
        _, info = _log_tiny_model(tmp_path, seed)
        return register_model(
            info.model_uri,
            "tiny",
            valid_value=value,
            alias="champion",
            tags={"dataset": "unit"},
            tracking_uri=store,
        )


def test_champion_alias_moves_only_when_validation_ndcg_improves(tmp_path, store):
    client = MlflowClient(store)
    assert _register(tmp_path, store, 0.10, seed=0) == ("1", True)  # no champion yet
    assert _register(tmp_path, store, 0.05, seed=1) == ("2", False)  # worse: champion stays
    assert client.get_model_version_by_alias("tiny", "champion").version == 1
    assert _register(tmp_path, store, 0.20, seed=2) == ("3", True)
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.version == 3
    assert float(champion.tags[CHAMPION_METRIC]) == 0.20
    assert champion.tags["dataset"] == "unit" and champion.tags["promoted"] == "true"
    # models:/name@champion loads in one call.
    loaded = mlflow.pyfunc.load_model("models:/tiny@champion")
    assert len(loaded.predict(pd.DataFrame({"history": [[1, 2]]}))["items"][0]) == 10


def test_a_failed_registration_leaves_no_version(tmp_path, store, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(RuntimeError, match="registry went away"):
        _register(tmp_path, store, 0.1, seed=0)
    assert MlflowClient(store).search_model_versions("name='tiny'") == []


def test_an_unreachable_server_is_named(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TrackingError, match=f"http://127.0.0.1:{port} is unreachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    check_tracking_uri(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # creates the folder
    assert (tmp_path / "new").is_dir()
