"""The diffusion job end to end: Ray Train -> MLflow run (metrics, sample grids) -> registry."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from diffusion.config import DiffusionExperiment
from diffusion.models import load_pretrained
from diffusion.train import fit
from pipelines.diffusion import main
from recsys.config import load_config
from serving.diffusion_app import load_generator

TINY = [
    "data.synthetic_count=64",
    "model.options={hidden_size: 32, depth: 2, num_heads: 2}",
    "train.steps=4",
    "train.batch_size=8",
    "train.log_every=2",
    "train.sample_every=2",
    "train.checkpoint_every=2",
    "sample.steps=2",
    "sample.per_class=1",
    "pipeline.system_metrics=false",
]


@pytest.mark.integration
@pytest.mark.distributed
@pytest.mark.slow
# Switch-DiT: the DiT path plus expert-load logging; the DiT family alone is covered in
# tests/diffusion (a second Ray Train run here would add a minute to CI for little).
@pytest.mark.parametrize("kind", ["switch-dit"])
def test_job_trains_logs_and_registers(tmp_path, local_ray, kind):
    # The worker dies once right after the step-2 checkpoint; Ray Train replaces it and
    # the run resumes from that checkpoint.
    args = [
        "configs/diffusion/demo.yaml",
        *TINY,
        f"output_root={tmp_path}",
        f"model.kind={kind}",
        "pipeline.fail_at_step=2",
    ]
    assert main(args) == 0
    assert list((tmp_path / "ray").glob("*/fail-injected"))  # the failure did happen

    # ... and the result is the uninterrupted run's, bitwise (batches are seeded per step).
    alone = load_config(
        DiffusionExperiment, "configs/diffusion/demo.yaml", [*TINY[:-1], f"model.kind={kind}"]
    )
    fit(alone, tmp_path / "alone")
    resumed = load_pretrained(tmp_path / "dit-demo" / "ema").state_dict()
    expected = load_pretrained(tmp_path / "alone" / "ema").state_dict()
    assert all(torch.equal(resumed[key], expected[key]) for key in expected)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    name = f"{kind}-synthetic"
    champion = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(champion.run_id)
    assert "final/neg_loss" in champion.tags
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [2, 4]
    if kind == "switch-dit":
        assert run.data.metrics["experts/imbalance"] >= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert artifacts == {"samples/samples-step000002.png", "samples/samples-step000004.png"}

    # The registered model serves: as a pyfunc and through the Serve app's loader.
    mlflow.set_tracking_uri(store)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        out = pyfunc.predict(pd.DataFrame({"class_label": [1], "seed": [0]}), params={"steps": 2})
        assert len(out["png"][0]) > 100
    finally:
        mlflow.set_tracking_uri(None)
    model, config = load_generator(f"models:/{name}@champion", store)
    assert config.model.kind == kind and model.config.num_classes == 10
