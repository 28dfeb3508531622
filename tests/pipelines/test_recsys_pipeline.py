"""The main job end to end on a small generated dataset (what `make demo` runs, smaller)."""

from __future__ import annotations

import json
import socket

import pytest
from mlflow.tracking import MlflowClient

import pipelines.recsys
from pipelines.recsys import main


@pytest.mark.distributed
def test_main_job_prepares_trains_registers_and_beats_popularity(tmp_path, capsys, local_ray):
    status = main(
        [
            "configs/recsys/demo.yaml",
            f"output_root={tmp_path}",
            "data.options={num_users: 1500, num_items: 300, mean_length: 15}",
            "data.max_len=30",
            "model.embedding_dim=32",
            "train.epochs=6",
            "train.batch_size=32",
            "pipeline.system_metrics=false",
        ]
    )
    assert status == 0
    run_dir = tmp_path / "demo"
    baseline = json.loads((run_dir / "baseline.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "model.safetensors").exists() and (run_dir / "config.yaml").exists()
    assert (tmp_path / "data" / "synthetic" / "manifest.json").exists()
    assert metrics["test"]["hr@10"] > baseline["popularity"]["test"]["hr@10"]
    out = capsys.readouterr().out
    assert "[summary]" in out
    # The embedded store: sqlite under output_root, one run, a registered champion.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("recsys").experiment_id])
    assert run.info.status == "FINISHED"
    champion = client.get_model_version_by_alias("hstu-synthetic", "champion")
    assert champion.run_id == run.info.run_id


def test_main_job_rejects_a_bad_key_before_any_work(tmp_path, capsys):
    assert main(["configs/recsys/demo.yaml", f"output_root={tmp_path}", "trian.epochs=1"]) == 2
    assert "unknown key trian" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("pipeline.tracking_uri=http://127.0.0.1:{port}", "http://127.0.0.1:{port} is unreachable"),
        ("data.source={tmp}/nowhere", "source directory {tmp}/nowhere does not exist"),
        ("pipeline.num_workers=0", "pipeline.num_workers: must be >= 1"),
    ],
)
def test_bad_input_fails_before_ray_starts(tmp_path, capsys, monkeypatch, override, message):
    def no_ray(config):
        raise AssertionError("Ray must not be reached with bad input")

    monkeypatch.setattr(pipelines.recsys, "_connect_ray", no_ray)
    fill = {"port": _closed_port(), "tmp": tmp_path}
    extra = ["data.dataset=ml-100k", "data.options={}"] if "data.source" in override else []
    args = ["configs/recsys/demo.yaml", f"output_root={tmp_path / 'out'}", *extra]
    assert main([*args, override.format(**fill)]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "out" / "mlflow.db").exists()  # no run, no registered model


def test_a_local_run_starts_its_own_ray_even_with_a_stale_cluster_file(monkeypatch):
    # CI once ran on an image whose /tmp/ray/ray_current_cluster named a dead
    # 192.0.2.2 head: a bare ray.init() tries to join it and fails. A run with no
    # configured address must ask Ray for a fresh local instance instead.
    import ray

    from pipelines.config import RecsysJobConfig
    from recsys.config import load_config

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    config = load_config(RecsysJobConfig, "configs/recsys/demo.yaml")
    assert pipelines.recsys._connect_ray(config) is True
    assert calls[0]["address"] == "local"
