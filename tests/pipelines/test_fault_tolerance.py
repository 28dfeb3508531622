"""A worker that dies mid-epoch is replaced; training resumes from the last Ray Train checkpoint.

Two tiny runs on the same local Ray instance: one uninterrupted, one whose
rank 1 exits (``os._exit``) in the middle of epoch 2 (``pipeline.fail_at_step``).
The second must end with the same weights and metrics after the same number of
steps, in one MLflow run.
"""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import TINY
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from pipelines.recsys import main

STEPS_PER_EPOCH = 4  # train.max_steps: every rank has more batches than that
EPOCHS = 2


def _run(tmp_path, name: str, *extra: str) -> dict:
    status = main(
        [
            "configs/recsys/demo.yaml",
            f"output_root={tmp_path}",
            f"name={name}",
            *TINY,
            f"train.epochs={EPOCHS}",
            f"train.max_steps={STEPS_PER_EPOCH}",
            "pipeline.max_failures=1",
            "pipeline.system_metrics=false",
            *extra,
        ]
    )
    assert status == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.distributed
@pytest.mark.slow
def test_a_dying_worker_is_replaced_and_the_run_ends_as_if_uninterrupted(tmp_path, local_ray):
    clean = _run(tmp_path, "clean")
    fail_at = STEPS_PER_EPOCH + 2  # the second step of epoch 2: epoch 1's checkpoint exists
    resumed = _run(tmp_path, "resumed", f"pipeline.fail_at_step={fail_at}")

    # Rank 1 did exit (it leaves a marker first), and the run restarted after epoch 1.
    assert len(list((tmp_path / "ray").glob("resumed-*/fail-injected"))) == 1
    assert resumed["resumed_after_epochs"] == [1] and clean["resumed_after_epochs"] == []

    # Same steps, same weights, same metrics as the uninterrupted run.
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, EPOCHS + 1))
    for got, want in zip(resumed["history"], clean["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["valid"] == pytest.approx(want["valid"], rel=1e-5)
    assert resumed["test"] == pytest.approx(clean["test"], rel=1e-5)
    clean_weights = load_file(tmp_path / "clean" / "model.safetensors")
    resumed_weights = load_file(tmp_path / "resumed" / "model.safetensors")
    for key, value in clean_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=1e-5, atol=1e-7)

    # One MLflow run per job, the interrupted one included, logged up to the last step.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recsys").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'resumed'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert max(m.step for m in steps) == EPOCHS * STEPS_PER_EPOCH
