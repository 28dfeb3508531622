"""The user's path for real: a Ray head and an MLflow server, a job submitted with
``JobSubmissionClient``, then everything checked through ``MlflowClient``.

Both services are started here as process groups of their own (bound to
127.0.0.1, free ports, token auth on) and killed by group afterwards, even when
the test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from _tiny import TINY
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(what: str, ready, timeout: float, log: Path):
    deadline, last_error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            result = ready()
        except Exception as error:
            result, last_error = None, error
        if result:
            return result
        time.sleep(1)
    raise TimeoutError(
        f"{what} not ready after {timeout:.0f} s (last error: {last_error!r}); "
        f"log:\n{log.read_text()[-3000:]}"
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then SIGKILL whatever is left."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            # The group may outlive its leader (Ray's raylet, GCS): probe it.
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def services(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("services")
    token = secrets.token_hex(32)
    # Nothing of a Ray instance this process may already drive (RAY_ADDRESS, ...) leaks in.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = {
        **inherited,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,  # not ~/.ray/auth_token: the test leaves the home folder alone
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Short: Ray's unix sockets live under it, and their paths must stay under 107 bytes.
    ray_temp = tempfile.mkdtemp(prefix="genrec-ray-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(ray_temp, ignore_errors=True))
    processes = []  # stopped before ray_temp is removed (finalizers run last-in, first-out)
    request.addfinalizer(lambda: [_stop(p) for p in reversed(processes)])

    mlflow_port, dashboard_port, gcs_port = _free_port(), _free_port(), _free_port()
    mlflow_log = root / "mlflow.log"
    processes.append(
        subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "mlartifacts"),
                "--workers",
                "1",
            ],
            env=env,
            stdout=mlflow_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    ray_log = root / "ray.log"
    processes.append(
        subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                "--num-cpus=2",
                f"--object-store-memory={400 * 2**20}",
                f"--temp-dir={ray_temp}",
                "--disable-usage-stats",
                # Own ports for the head's agents too: the defaults clash with any other
                # Ray instance on the machine (such as the in-process one of other tests).
                *(
                    f"--{flag}={_free_port()}"
                    for flag in (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "metrics-export-port",
                        "ray-client-server-port",
                    )
                ),
            ],
            env=env,
            stdout=ray_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    _wait_for(
        "MLflow server",
        lambda: requests.get(f"{tracking_uri}/health", timeout=2).ok,
        120,
        mlflow_log,
    )
    from ray.job_submission import JobSubmissionClient

    dashboard = f"http://127.0.0.1:{dashboard_port}"
    headers = {"Authorization": f"Bearer {token}"}
    client = _wait_for(
        "Ray head (job API)",
        lambda: JobSubmissionClient(dashboard, headers=headers),
        120,
        ray_log,
    )
    return {"client": client, "tracking_uri": tracking_uri, "root": root}


@pytest.mark.integration
@pytest.mark.slow
def test_submitted_job_trains_logs_and_registers(services, tmp_path):
    from ray.job_submission import JobStatus

    client, tracking_uri = services["client"], services["tracking_uri"]
    output_root = tmp_path / "out"
    overrides = [
        f"output_root={output_root}",
        "name=submitted",
        *TINY,
        "train.epochs=2",
        "pipeline.experiment_name=integration",
        "pipeline.registered_model_name=hstu-integration",
    ]
    quoted = " ".join(f"'{o}'" for o in overrides)
    # The head's job agent may come up a little after its HTTP API: retry until it takes the job.
    submit = lambda: client.submit_job(  # noqa: E731
        entrypoint=f"{sys.executable} -m pipelines.recsys configs/recsys/demo.yaml {quoted}",
        runtime_env={
            "working_dir": str(REPO_ROOT),
            "excludes": [".venv", "runs", ".git", "*.parquet", "__pycache__", ".ruff_cache"],
            "env_vars": {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
                "GENREC_COMMIT": "integration-test",
            },
        },
    )
    job_id = _wait_for("Ray job agent", submit, 60, services["root"] / "ray.log")
    deadline = time.monotonic() + 600
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    # Progress a user watches in the job log.
    for expected in ("steps/s", "ETA", "[valid] epoch 2/2", "[test]", "[mlflow] registered"):
        assert expected in logs, expected

    mlflow_client = MlflowClient(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name("integration")
    (run,) = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in ("train/loss", "train/lr", "train/steps_per_second", "valid/ndcg_at_10",
                "valid/hr_at_10", "test/ndcg_at_10", "best_valid/ndcg_at_10"):  # fmt: skip
        assert key in metrics, key
    assert any(key.startswith("system/") for key in metrics), sorted(metrics)
    assert len(mlflow_client.get_metric_history(run.info.run_id, "valid/ndcg_at_10")) == 2
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["pipeline.num_workers"] == "2"
    assert run.data.tags["dataset"] == "synthetic"
    assert run.data.tags["model_family"] == "hstu"
    assert run.data.tags["commit"] == "integration-test"

    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    artifacts |= {
        a.path
        for folder in ("dataset", "metrics", "plots")
        for a in mlflow_client.list_artifacts(run.info.run_id, folder)
    }
    for path in ("config.yaml", "dataset/manifest.json", "metrics/epochs.csv",
                 "metrics/metrics.json", "plots/training_curve.png"):  # fmt: skip
        assert path in artifacts, sorted(artifacts)

    version = mlflow_client.get_model_version_by_alias("hstu-integration", "champion")
    assert version.run_id == run.info.run_id
    assert float(version.tags["valid/ndcg_at_10"]) == pytest.approx(
        metrics["best_valid/ndcg_at_10"]
    )
    # The registered model loads in one call, without Ray, through the server.
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/hstu-integration@champion")
        top = model.predict(pd.DataFrame({"history": [[1, 2, 3]]}), params={"k": 5})
        assert len(top["items"][0]) == 5
    finally:
        mlflow.set_tracking_uri(None)
    shutil.rmtree(output_root, ignore_errors=True)
