"""The diffusion job: ``python -m pipelines.diffusion CONFIG.yaml [key=value ...]``.

The same loop as ``python -m diffusion.train`` (same YAML, plus a ``pipeline``
section), run by Ray Train and tracked in MLflow:

1. checks: config keys, the tracking store and the data, before Ray starts;
2. train: a ``TorchTrainer`` with ``pipeline.num_workers`` ranks (DDP over gloo
   on CPU, NCCL on GPU); every checkpoint goes to Ray Train, so a dead worker
   is replaced and the run resumes from the last one (``pipeline.max_failures``);
   loss, gradient norm, images/s and expert load per ``log_every`` steps, sample
   grids (PNG) and FID / KID / accuracy at ``eval.at_steps`` go to one MLflow run;
3. register: the EMA weights as an MLflow pyfunc (``pipelines.diffusion_model``),
   a new version of ``<kind>-<dataset>``, aliased ``champion`` when its final FID
   (or, without a classifier, its final loss) beats the champion's.

    python -m pipelines.diffusion configs/diffusion/demo.yaml
    ray job submit --working-dir . -- python -m pipelines.diffusion configs/diffusion/dit-fmnist.yaml \\
        output_root=/shared/runs pipeline.tracking_uri=http://mlflow:5000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import yaml

from diffusion.config import DiffusionExperiment
from diffusion.data import DataError
from recsys.config import ConfigError, load_config, to_dict

from . import diffusion_model
from .config import PipelineConfig
from .tracking import (
    MetricLogger,
    TrackingError,
    check_tracking_uri,
    git_commit,
    job_run,
    register_model,
    resolve_tracking_uri,
)
from .trainer import torch_trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "checkpoint.pt"


@dataclass
class DiffusionPipelineConfig(PipelineConfig):
    num_workers: int = 1  # data-parallel ranks; one is right for a laptop-sized model
    experiment_name: str = "diffusion"


@dataclass
class DiffusionJobConfig(DiffusionExperiment):
    pipeline: DiffusionPipelineConfig = field(default_factory=DiffusionPipelineConfig)

    def experiment(self) -> DiffusionExperiment:
        """The experiment part alone (what ``diffusion.train`` and the workers see)."""
        fields = {k: getattr(self, k) for k in DiffusionExperiment.__dataclass_fields__}
        return DiffusionExperiment(**fields)

    @property
    def model_name(self) -> str:
        return self.pipeline.registered_model_name or f"{self.model.kind}-{self.data.dataset}"


# ---------------------------------------------------------------------------- worker


def train_worker(job: dict) -> None:
    """One Ray Train rank: ``diffusion.train.fit`` with Ray checkpoints and MLflow logging."""
    import ray.train
    import ray.train.torch

    from diffusion.train import Hooks, fit, make_evaluator

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config: DiffusionExperiment = job["experiment"]
    work = Path(tempfile.mkdtemp(prefix=f"genrec-dit-rank{rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restarted worker: continue from the last reported state
        with restored.as_directory() as folder:
            shutil.copy(Path(folder) / CHECKPOINT, work / CHECKPOINT)
    hooks = Hooks(rank=rank, world_size=world)
    if world > 1:
        # Experts a batch does not route to get no gradient: DDP must be told.
        hooks.prepare_model = lambda model: ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True}
        )
    if rank == 0:
        logger = MetricLogger(job["tracking_uri"], job["run_id"])
        hooks.log = logger.log
        hooks.artifact = lambda path, folder: logger.client.log_artifact(
            job["run_id"], str(path), folder
        )
        evaluate, floor_metrics = make_evaluator(config)
        hooks.evaluate = evaluate
        if floor_metrics:
            logger.log(floor_metrics, 0)

    def checkpointed(folder, step: int, last: dict) -> None:
        metrics = {"step": step, **{k: v for k, v in last.items() if isinstance(v, int | float)}}
        if folder is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as staging:
            shutil.copy(Path(folder) / CHECKPOINT, Path(staging) / CHECKPOINT)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))
        _maybe_die(job, step, rank, world)

    hooks.checkpointed = checkpointed
    fit(config, work, hooks)
    shutil.rmtree(work, ignore_errors=True)


def _maybe_die(job: dict, step: int, rank: int, world: int) -> None:
    """Tests only (``pipeline.fail_at_step``): the last rank exits once, as a dying worker
    would, right after the first checkpoint at or past that step."""
    fail_at, marker = job.get("fail_at_step"), Path(job.get("fail_marker", "."))
    if fail_at is None or rank != world - 1 or step < fail_at or marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    # Ray Train's controller collects reported checkpoints when it polls the workers
    # (every 2 s): dying sooner would lose this one and resume from the one before.
    time.sleep(6)
    print(f"[fault injection] rank {rank} exits after step {step}", flush=True)
    os._exit(1)


# ---------------------------------------------------------------------------- driver


def _resolve_data(config: DiffusionJobConfig) -> None:
    """Fix the data folder on the driver (workers may not see $GENREC_DATA_DIR) and check it."""
    from diffusion.data import load_fashion_mnist

    if config.data.dataset != "fashion-mnist":
        return
    if config.data.source is None and os.environ.get("GENREC_DATA_DIR"):
        config.data.source = str(Path(os.environ["GENREC_DATA_DIR"]) / "fashion-mnist")
    if config.data.source is not None:
        config.data.source = str(Path(config.data.source).resolve())
    load_fashion_mnist(config.data.source, "test")  # fails here, naming the file, if broken


def _train(config: DiffusionJobConfig, job: dict, storage: Path, name: str):
    trainer = torch_trainer(train_worker, job, config.pipeline, storage, name, keep_checkpoints=2)
    return trainer.fit()


def _selection(history: list[dict]) -> tuple[str, float]:
    """(tag name, higher-is-better value) that decides whether the new version is champion."""
    evaluations = [h for h in history if "eval/fid" in h]
    if evaluations:
        return "final/neg_fid", -evaluations[-1]["eval/fid"]
    losses = [h for h in history if "train/loss" in h]
    return "final/neg_loss", -losses[-1]["train/loss"]


def run(config: DiffusionJobConfig) -> dict:
    from diffusion.train import build_model

    from .recsys import _connect_ray

    started = time.perf_counter()
    tracking_uri = resolve_tracking_uri(config.pipeline.tracking_uri, config.output_root)
    check_tracking_uri(tracking_uri)
    _resolve_data(config)
    experiment = config.experiment()
    run_dir = Path(config.output_root).resolve() / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(experiment), sort_keys=False))
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    started_ray = _connect_ray(config)
    try:
        tags = {
            "dataset": config.data.dataset,
            "model_kind": config.model.kind,
            "model_size": config.model.size,
            "commit": git_commit(REPO_ROOT),
        }
        with job_run(config, tracking_uri, tags) as run_id:
            storage = Path(config.output_root).resolve() / "ray"
            name = f"{config.name}-{run_id[:8]}"
            job = {
                "experiment": experiment,
                "tracking_uri": tracking_uri,
                "run_id": run_id,
                "fail_at_step": config.pipeline.fail_at_step,
                "fail_marker": str(storage / name / "fail-injected"),
            }
            result = _train(config, job, storage, name)
            with result.checkpoint.as_directory() as folder:
                state = torch.load(
                    Path(folder) / CHECKPOINT, map_location="cpu", weights_only=False
                )
            size = config.data.pad_to or (
                config.data.synthetic_size if config.data.dataset == "synthetic" else 28
            )
            ema = build_model(experiment, size, 10)
            ema.load_state_dict(state["ema"])
            ema.save_pretrained(run_dir / "ema")
            metric, value = _selection(state["history"])
            mlflow.log_metric(metric, value)
            info = diffusion_model.log_model(run_dir / "ema", run_dir / "config.yaml")
            version, promoted = register_model(
                info.model_uri,
                config.model_name,
                valid_value=value,
                alias=config.pipeline.champion_alias,
                tags=tags,
                tracking_uri=tracking_uri,
                metric=metric,
            )
            print(
                f"[mlflow] registered {config.model_name} version {version}"
                + (f", now @{config.pipeline.champion_alias}" if promoted else " (champion kept)"),
                flush=True,
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if started_ray:
            import ray

            ray.shutdown()
    print(f"[done] {run_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    return {
        "run_id": run_id,
        "model_version": version,
        "promoted": promoted,
        "history": state["history"],
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.diffusion", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", help="YAML config, e.g. configs/diffusion/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=500")
    args = parser.parse_args(argv)
    try:
        run(load_config(DiffusionJobConfig, args.config, args.overrides))
    except (ConfigError, DataError, TrackingError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
