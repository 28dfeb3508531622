"""Serving the registry's champion, and swapping it while requests are in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from _serving_tools import deploy, train_tiny, wait_healthy

from pipelines import recsys_model
from pipelines.tracking import register_model
from recsys.config import load_config
from recsys.experiment import ExperimentConfig
from serving.loading import ModelNotFound, load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "tiny-swap"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_run):
    """A sqlite MLflow store holding version 1 (the shared tiny run) as champion."""
    root = tmp_path_factory.mktemp("registry")
    store = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    _register(store, tiny_run, root, valid=0.1)
    yield store, root
    mlflow.set_tracking_uri(None)


def _register(store: str, run: Path, root: Path, valid: float) -> str:
    experiment = load_config(ExperimentConfig, run / "config.yaml")
    candidates = torch.from_numpy(np.load(run / "candidates.npy"))
    with mlflow.start_run(experiment_id=mlflow.set_experiment("serve-tests").experiment_id):
        mlflow.log_metric("test/hr_at_10", valid)
        info = recsys_model.log_model(
            run / "model.safetensors", experiment, candidates, root / f"work-{valid}"
        )
    version, promoted = register_model(
        info.model_uri, NAME, valid_value=valid, alias="champion", tags={}, tracking_uri=store
    )
    assert promoted
    return version


def test_loading_names_what_is_missing(registry, tmp_path):
    store, _ = registry
    with pytest.raises(ModelNotFound, match="has no alias @nope"):
        load_bundle(f"models:/{NAME}@nope", store)
    with pytest.raises(ModelNotFound, match=r"model\.safetensors does not exist"):
        load_bundle(str(tmp_path), store)
    with pytest.raises(ModelNotFound, match="models:/NAME@ALIAS"):
        load_bundle("models:/a/b/c", store)
    assert load_bundle(f"models:/{NAME}", store).info["alias"] == "champion"  # the default


def test_champion_swaps_without_failing_requests_in_flight(serve_http, registry, tmp_path):
    store, root = registry
    url = f"{serve_http}/swap"
    deploy("swap", {"model": f"models:/{NAME}@champion", "tracking_uri": store}, "/swap")
    wait_healthy(url)
    first = requests.get(f"{url}/model", timeout=10).json()
    assert (first["name"], first["version"], first["alias"]) == (NAME, "1", "champion")

    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client(history):
        while not stop.is_set():
            response = requests.post(f"{url}/recommend", json={"history": history}, timeout=30)
            seen.append((response.status_code, response.json().get("model_version")))

    threads = [threading.Thread(target=client, args=([1 + i, 2 + i],)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        better = train_tiny(tmp_path, "tiny-v2", 1, "train.epochs=1")
        assert _register(store, better, root, valid=0.2) == "2"  # the alias moves to version 2
        reloaded = requests.post(f"{url}/admin/reload", timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["serving"]["version"] == "2"
        time.sleep(1.0)
        # A redeploy with a new user_config: Serve calls reconfigure on every replica.
        deploy(
            "swap",
            {"model": f"models:/{NAME}@champion", "tracking_uri": store},
            "/swap",
            user_config={"model": f"models:/{NAME}/1"},
        )
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert seen and all(status == 200 for status, _ in seen), {s for s, _ in seen}
    versions = [version for _, version in seen]
    assert "1" in versions and "2" in versions
    assert requests.get(f"{url}/model", timeout=10).json()["version"] == "1"
    bad = requests.post(f"{url}/admin/reload", json={"source": "models:/nothing@x"}, timeout=30)
    assert bad.status_code == 422 and "nothing" in bad.text
    assert requests.post(f"{url}/recommend", json={"history": [1]}, timeout=30).ok
    from ray import serve

    serve.delete("swap")
