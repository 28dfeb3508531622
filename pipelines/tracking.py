"""MLflow for pipeline jobs: where runs go, what each run logs, and model registration.

Default store: ``sqlite:///<output_root>/mlflow.db`` with artifacts under
``<output_root>/mlartifacts``, nothing to start. ``MLFLOW_TRACKING_URI`` (or
``pipeline.tracking_uri``) points everything at a tracking server instead.
Metric names cannot hold ``@`` in MLflow, so ``ndcg@10`` is logged as
``valid/ndcg_at_10``.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recsys.config import flatten, to_dict

# The version tag that holds the metric the champion alias is decided on.
CHAMPION_METRIC = "valid/ndcg_at_10"


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable folder)."""


def metric_key(stage: str, name: str) -> str:
    """("valid", "ndcg@10") -> "valid/ndcg_at_10" (MLflow refuses "@")."""
    return f"{stage}/{name.replace('@', '_at_')}"


def stage_metrics(stage: str, metrics: dict) -> dict[str, float]:
    return {metric_key(stage, k): float(v) for k, v in metrics.items()}


def resolve_tracking_uri(configured: str | None, output_root: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str, output_root: str | Path) -> str | None:
    """Artifact folder for experiments this job creates in a local store; None: the server decides."""
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        return (Path(output_root).resolve() / "mlartifacts").as_uri()
    return None


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the store cannot be reached or written."""
    if uri.startswith(("http://", "https://")):
        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
        except requests.RequestException as error:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({type(error).__name__}). "
                "Start it (infra/mlflow_server.sh start) or fix MLFLOW_TRACKING_URI / pipeline.tracking_uri."
            ) from None
        if response.status_code != 200:
            raise TrackingError(
                f"MLflow tracking server {uri} answered /health with HTTP {response.status_code}"
            )
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"cannot create the MLflow store folder {folder}: {error}"
            ) from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"the MLflow store folder {folder} is not writable")
        return
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        raise TrackingError(f"MLflow tracking URI {uri} cannot be used: {error}") from None


def git_commit(folder: str | Path = ".") -> str:
    """$GENREC_COMMIT (set it when submitting without .git), else `git rev-parse HEAD`."""
    if os.environ.get("GENREC_COMMIT"):
        return os.environ["GENREC_COMMIT"]
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def start_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    *,
    artifact_root: str | None,
    tags: dict[str, str],
    system_metrics: bool,
):
    """Start (and return) the job's one MLflow run, creating the experiment if needed."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None if artifact_root is None else f"{artifact_root}/{experiment_name}"
        experiment_id = client.create_experiment(experiment_name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    return mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags=tags,
        log_system_metrics=system_metrics,
    )


@contextmanager
def job_run(config, tracking_uri: str, tags: dict[str, str]):
    """A pipeline job's one MLflow run, set up from its ``pipeline`` section; yields the run id.

    The config is logged before anything else, so even a failed job's run says what it ran."""
    with start_run(
        tracking_uri,
        config.pipeline.experiment_name,
        config.name,
        artifact_root=local_artifact_root(tracking_uri, config.output_root),
        tags=tags,
        system_metrics=config.pipeline.system_metrics,
    ) as active:
        run_id = active.info.run_id
        print(f"[mlflow] run {run_id} in {tracking_uri}", flush=True)
        log_config(config)
        yield run_id


def log_config(config) -> None:
    """The full resolved config as flat params and as ``config.yaml``."""
    tree = to_dict(config)
    params = {key: "null" if v is None else str(v) for key, v in flatten(tree).items()}
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(tree, sort_keys=False), "config.yaml")


class MetricLogger:
    """Batched metric logging to one run from any process (Ray workers included)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if value is not None and math.isfinite(float(value))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)


def champion_value(
    client: MlflowClient, name: str, alias: str, metric: str = CHAMPION_METRIC
) -> float | None:
    """The champion's selection metric, or None when the alias is not set."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    value = version.tags.get(metric)
    return float(value) if value is not None else None


def register_model(
    model_uri: str,
    name: str,
    *,
    valid_value: float,
    alias: str,
    tags: dict[str, str],
    tracking_uri: str,
    metric: str = CHAMPION_METRIC,
) -> tuple[str, bool]:
    """Register ``model_uri`` as a new version of ``name``; move ``alias`` if it beats the champion.

    ``valid_value`` is the ``metric`` tag of the version; higher is better (pass a negated
    value for lower-is-better metrics such as FID). Returns (version, promoted). Either
    the version ends up fully tagged (and
    aliased when better), or it is deleted again: no half-registered model.
    """
    client = MlflowClient(tracking_uri)
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        client.set_model_version_tag(name, version, metric, repr(float(valid_value)))
        current = champion_value(client, name, alias, metric)
        promoted = current is None or valid_value > current
        if promoted:
            client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, "promoted", str(promoted).lower())
    except BaseException:
        client.delete_model_version(name, version)
        raise
    return version, promoted
