"""Find a trained recommender and load it: from the MLflow registry or from a run folder.

    load_bundle("models:/demo-hstu@champion", tracking_uri="sqlite:///runs/mlflow.db")
    load_bundle("models:/demo-hstu/3")            # a fixed version
    load_bundle("models:/demo-hstu")              # the champion alias
    load_bundle("runs/demo")                       # a `python -m recsys.train` run folder

No Ray here: the Serve app, benchmarks and notebooks all load through this.
"""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from recsys.model_files import CANDIDATES, CONFIG, WEIGHTS, load_candidates, load_recommender

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")
DEFAULT_ALIAS = "champion"


class ModelNotFound(RuntimeError):
    """The model source names nothing loadable; the message says what to check."""


@dataclass
class ModelBundle:
    """A loaded model and what /model reports about it."""

    model: torch.nn.Module
    config: object  # ExperimentConfig
    candidates: torch.Tensor  # item ids that may be recommended
    info: dict = field(default_factory=dict)


def parse_registry_uri(source: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) for ``models:/name@alias``, ``models:/name/3`` or ``models:/name``
    (the ``champion`` alias); None for anything that is not a registry URI."""
    match = _REGISTRY_URI.match(source)
    if match is None:
        if source.startswith("models:/"):
            raise ModelNotFound(
                f"{source!r} is not a registry URI: use models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return None
    alias = match["alias"] or (None if match["version"] else DEFAULT_ALIAS)
    return match["name"], alias, match["version"]


def load_bundle(source: str, tracking_uri: str | None = None) -> ModelBundle:
    """Load from the registry (``models:/...``) or from a local run folder."""
    parsed = parse_registry_uri(source)
    if parsed is None:
        return _from_run_folder(Path(source))
    return _from_registry(*parsed, tracking_uri=tracking_uri)


def _from_run_folder(folder: Path) -> ModelBundle:
    weights, config = folder / "model.safetensors", folder / "config.yaml"
    for needed in (weights, config):
        if not needed.is_file():
            raise ModelNotFound(
                f"{needed} does not exist: point the server at a finished run folder of "
                "`python -m recsys.train` or at a registered model (models:/NAME@ALIAS)"
            )
    model, experiment = load_recommender(weights, config)
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    info = {
        "name": experiment.name,
        "version": None,
        "alias": None,
        "source": str(folder.resolve()),
        "metrics": {
            f"{stage}/{key}": value
            for stage in ("valid", "test")
            for key, value in (metrics.get(stage) or {}).items()
        },
    }
    candidates = load_candidates(folder / "candidates.npy", model.item_embeddings.num_item_ids)
    return _bundle(model, experiment, candidates, info)


@contextmanager
def registered_model_files(name: str, alias: str | None, version: str | None, tracking_uri):
    """Yield (client, model version, {artifact key: local file}) of a registered pyfunc.

    The files live in a temporary folder removed on exit: read them inside the block.
    Used by every Serve app that loads from the registry (recommender, generator)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        entry = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as error:
        wanted = f"alias @{alias}" if alias else f"version {version}"
        raise ModelNotFound(
            f"registered model {name!r} has no {wanted} in {client.tracking_uri} "
            f"({error.message.splitlines()[0]}); list versions in the MLflow UI or train and "
            "register one with `python -m pipelines.recsys` / `python -m pipelines.diffusion`"
        ) from error
    with tempfile.TemporaryDirectory(prefix="genrec-serve-") as folder:
        local = Path(
            mlflow.artifacts.download_artifacts(
                # The version's own location, not models:/...: that form is resolved
                # against the global registry URI, not this client's.
                artifact_uri=client.get_model_version_download_uri(name, entry.version),
                dst_path=folder,
                tracking_uri=tracking_uri,
            )
        )
        # An MLflow pyfunc keeps its files under the paths its MLmodel names.
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        yield (
            client,
            entry,
            {key: local / spec["path"] for key, spec in flavor["artifacts"].items()},
        )


def _from_registry(name, alias, version, tracking_uri) -> ModelBundle:
    with registered_model_files(name, alias, version, tracking_uri) as (client, entry, files):
        model, experiment = load_recommender(files[WEIGHTS], files[CONFIG])
        candidates = load_candidates(files[CANDIDATES], model.item_embeddings.num_item_ids)
    metrics = {}
    if entry.run_id:
        metrics = {
            key: value
            for key, value in client.get_run(entry.run_id).data.metrics.items()
            if key.startswith(("test/", "best_valid/"))
        }
    info = {
        "name": name,
        "version": str(entry.version),
        "alias": alias or (next(iter(entry.aliases)) if entry.aliases else None),
        "source": f"models:/{name}/{entry.version}",
        "run_id": entry.run_id,
        "metrics": metrics,
    }
    return _bundle(model, experiment, candidates, info)


def _bundle(model, experiment, candidates, info) -> ModelBundle:
    info = {
        **info,
        "family": experiment.model.family,
        "dataset": experiment.data.dataset,
        "max_len": experiment.data.max_len,
        "num_item_ids": model.item_embeddings.num_item_ids,
        "num_candidates": int(candidates.numel()),
        "ranking_head": bool(getattr(model, "has_ranking_head", False)),
    }
    return ModelBundle(model=model, config=experiment, candidates=candidates, info=info)
