"""The Ray Train ``TorchTrainer`` every pipeline job runs its loop in, built from its config."""

from __future__ import annotations

from pathlib import Path


def torch_trainer(
    loop,
    job: dict,
    pipeline,
    storage: Path,
    name: str,
    *,
    keep_checkpoints: int | None,
    datasets: dict | None = None,
):
    """``pipeline.num_workers`` ranks (gloo on CPU, NCCL with ``use_gpu``), one CPU (and GPU)
    each, ``pipeline.max_failures`` worker deaths survived from the last checkpoint, which
    Ray Train keeps under ``storage/name`` (``keep_checkpoints``; None keeps them all).
    ``datasets``: Ray Datasets handed whole to every rank (each reads its own shard)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    extra = {}
    if datasets is not None:
        extra = {"datasets": datasets, "dataset_config": DataConfig(datasets_to_split=[])}
    return TorchTrainer(
        loop,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if pipeline.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=pipeline.num_workers,
            use_gpu=pipeline.use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if pipeline.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=pipeline.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
        **extra,
    )
