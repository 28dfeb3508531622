"""Helpers of the serving tests: a tiny trained model, Serve deployments, readiness."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import requests

TINY_OVERRIDES = [
    "data.options={num_users: 400, num_items: 150, mean_length: 12}",
    "data.max_len=20",
    "model.embedding_dim=16",
    "model.ranking_head=true",
    "train.epochs=2",
    "train.batch_size=64",
    "train.num_negatives=32",
    "train.patience=null",
]


def train_tiny(output_root: Path, name: str, seed: int = 0, *extra: str) -> Path:
    """Train the demo model, shrunk, with ``python -m recsys.train``'s code; returns its folder."""
    from recsys.config import load_config
    from recsys.experiment import ExperimentConfig
    from recsys.train import run

    overrides = [*TINY_OVERRIDES, f"name={name}", f"seed={seed}", f"output_root={output_root}"]
    config = load_config(ExperimentConfig, "configs/recsys/demo.yaml", [*overrides, *extra])
    run(config)
    return output_root / name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deploy(name: str, args: dict, route_prefix: str, **options):
    """Run the app under ``route_prefix`` (0-CPU replicas: the test Ray has 2 CPUs)."""
    from ray import serve

    from serving.app import RecommenderService, ServiceArgs

    checked = ServiceArgs(**args).model_dump()
    deployment = RecommenderService.options(
        ray_actor_options={"num_cpus": 0, **options.pop("ray_actor_options", {})}, **options
    )
    serve.run(deployment.bind(checked), name=name, route_prefix=route_prefix)


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz never answered")
