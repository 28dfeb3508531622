"""The main recommender job: ``python -m pipelines.recsys CONFIG.yaml [key=value ...]``.

Runs on a laptop (starts a local Ray instance, or joins one with
``pipeline.ray_address=auto``) and under ``ray job submit --working-dir . --
python -m pipelines.recsys ...`` against a Ray cluster. Steps:

1. checks: config keys (``ConfigError``), the tracking store (``TrackingError``)
   and the dataset (``DataError``) are checked before any Ray work starts;
2. prepare: the dataset as Parquet (reused when already prepared), a
   leave-one-out split and the popularity baseline; Ray Data reads
   ``sequences.parquet`` into one shard of users per worker;
3. train: Ray Train ``TorchTrainer``, ``pipeline.num_workers`` ranks (gloo on
   CPU, NCCL on GPU) training the TorchRec-sharded model, a checkpoint and
   full-ranking validation every epoch; ``pipeline.max_failures`` worker
   deaths are survived by resuming from the last checkpoint;
4. evaluate: the epoch chosen on validation, tested once (full ranking);
5. register: the model as an MLflow pyfunc, a new version of
   ``pipeline.registered_model_name``, aliased ``champion`` when its validation
   NDCG@10 beats the current champion's.

Everything is logged to one MLflow run (default store: ``<output_root>/mlflow.db``;
``MLFLOW_TRACKING_URI`` overrides it) and written to ``<output_root>/<name>/``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import mlflow
import pyarrow as pa
import torch
import yaml
from safetensors.torch import load_file

from recsys.baselines import popularity_scores
from recsys.config import ConfigError, load_config, to_dict
from recsys.data import DataError, ensure_prepared, leave_one_out, load_sequences
from recsys.data.schema import SEQUENCES_FILE
from recsys.evaluate import evaluate
from recsys.train import ModelScorer, build_model, observed_items

from . import recsys_model
from .config import RecsysJobConfig
from .recsys_train_loop import PROGRESS_FILE, SHARD_PREFIX, WEIGHTS_FILE, train_loop
from .tracking import (
    MetricLogger,
    TrackingError,
    check_tracking_uri,
    git_commit,
    job_run,
    register_model,
    resolve_tracking_uri,
    stage_metrics,
)
from .trainer import torch_trainer

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- prepare


def _prepare(config: RecsysJobConfig) -> tuple[Path, dict, dict]:
    """(prepared folder, manifest, the driver's view: split, candidates, baseline)."""
    data_dir = Path(
        config.data.prepared_dir or Path(config.output_root) / "data" / config.data.dataset
    ).resolve()
    manifest = ensure_prepared(
        config.data.dataset, data_dir, config.data.source, config.data.options
    )
    print(
        f"[data] {manifest['dataset']}: {manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{manifest['num_interactions']:,} interactions ({data_dir})",
        flush=True,
    )
    data = load_sequences(data_dir)
    if not (config.model.family == "hstu" and config.model.time_bias):
        data = type(data)(data.user_ids, data.item_ids, None, data.manifest)
    split = leave_one_out(data, max_len=config.data.max_len)
    candidates = observed_items(split.train, split.valid, split.test)

    counts = popularity_scores(leave_one_out(data).train, data.num_item_ids)  # untruncated
    scorer = lambda batch: counts.expand(len(batch), -1)  # noqa: E731
    options = dict(batch_size=config.eval.batch_size, exclude_history=config.eval.exclude_history)
    ks = tuple(config.eval.ks)
    baseline = {
        "valid": evaluate(scorer, split.valid, ks, **options),
        "test": evaluate(scorer, split.test, ks, **options),
    }
    for stage in ("valid", "test"):
        m = baseline[stage]
        print(
            f"[popularity] {stage}: HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  MRR {m['mrr']:.4f}",
            flush=True,
        )
    view = {
        "split": split,
        "candidates": candidates,
        "num_item_ids": data.num_item_ids,
        "baseline": baseline,
    }
    return data_dir, manifest, view


def _rank_rows(table: pa.Table, rank: int, world_size: int) -> pa.Table:
    users = table.column("user_id").to_numpy()
    return table.filter(pa.array(users % world_size == rank))


def _user_shards(data_dir: Path, world_size: int) -> dict:
    """One materialised Ray dataset per rank: users with ``user_id % world_size == rank``.

    A fixed assignment (rather than ``streaming_split``, which hands blocks to
    whichever worker asks first) keeps every attempt of a run on the same data.
    """
    import ray.data

    sequences = ray.data.read_parquet(str(data_dir / SEQUENCES_FILE))
    return {
        f"{SHARD_PREFIX}{rank}": sequences.map_batches(
            partial(_rank_rows, rank=rank, world_size=world_size), batch_format="pyarrow"
        ).materialize()
        for rank in range(world_size)
    }


# ---------------------------------------------------------------------------- Ray


def _connect_ray(config: RecsysJobConfig) -> bool:
    """Join the configured (or $RAY_ADDRESS) cluster, else start a local one; True if started here."""
    import ray

    pipeline = config.pipeline
    if ray.is_initialized():
        return False
    address = pipeline.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return False
    # "local", not None: with no address Ray would join whatever cluster
    # /tmp/ray/ray_current_cluster names, even a stale one from another machine image.
    ray.init(
        address="local",
        num_cpus=pipeline.local_num_cpus or max(pipeline.num_workers, os.cpu_count() or 1),
        object_store_memory=pipeline.local_object_store_mb * 2**20,
        include_dashboard=False,
    )
    return True


def _train(config: RecsysJobConfig, job: dict, shards: dict, storage: Path, name: str):
    # Every epoch is kept: the epoch chosen on validation is read back from its checkpoint.
    trainer = torch_trainer(
        train_loop, job, config.pipeline, storage, name, keep_checkpoints=None, datasets=shards
    )
    return trainer.fit()


# ---------------------------------------------------------------------------- artifacts


def _epoch_table(history: list[dict]) -> str:
    keys = sorted({k for h in history for k in h["valid"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["epoch", "loss", "seconds", "sequences_per_second", "eval_seconds", *keys])
    for h in history:
        writer.writerow(
            [h["epoch"], h["loss"], h["seconds"], h["sequences_per_second"], h["eval_seconds"]]
            + [h["valid"].get(k) for k in keys]
        )
    return out.getvalue()


def _curve_png(path: Path, steps: list, history: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    # A resumed run logs the replayed steps again: keep the last value of each step.
    by_step = {m.step: m.value for m in sorted(steps, key=lambda m: m.timestamp)}
    left.plot(sorted(by_step), [by_step[s] for s in sorted(by_step)])
    epochs = [h["epoch"] for h in history]
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot(epochs, [h["valid"][metric] for h in history], marker="o")
    right.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------- the job


def _check(config: RecsysJobConfig) -> str:
    """Everything that can be checked before Ray starts; returns the tracking URI."""
    tracking_uri = resolve_tracking_uri(config.pipeline.tracking_uri, config.output_root)
    check_tracking_uri(tracking_uri)
    return tracking_uri


def run(config: RecsysJobConfig) -> dict:
    started = time.perf_counter()
    tracking_uri = _check(config)
    if not Path(config.output_root).is_absolute() and "working_dir_files" in str(Path.cwd()):
        # Under `ray job submit --working-dir`, the folder is a temporary copy.
        print(
            f"[warning] output_root={config.output_root} is relative to Ray's temporary copy of "
            "the working dir and goes away with it: pass output_root=/absolute/path",
            flush=True,
        )
    data_dir, manifest, view = _prepare(config)
    run_dir = Path(config.output_root).resolve() / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    baseline = view["baseline"]
    (run_dir / "baseline.json").write_text(
        json.dumps({"popularity": baseline, "dataset": manifest["dataset"]}, indent=2)
    )

    print(f"[job] outputs in {run_dir}; tracking {tracking_uri}", flush=True)
    # mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI; put it back afterwards so that
    # a later job in this process does not inherit this job's store.
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    started_ray = _connect_ray(config)
    try:
        shards = _user_shards(data_dir, config.pipeline.num_workers)
        tags = {
            "dataset": config.data.dataset,
            "model_family": config.model.family,
            "commit": git_commit(REPO_ROOT),
        }
        with job_run(config, tracking_uri, tags) as run_id:
            mlflow.log_dict(manifest, "dataset/manifest.json")
            mlflow.log_metrics(
                {
                    **stage_metrics("popularity_valid", baseline["valid"]),
                    **stage_metrics("popularity_test", baseline["test"]),
                }
            )
            results = _train_evaluate_register(
                config, view, manifest, shards, run_dir, tracking_uri, run_id, tags
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if started_ray:
            import ray

            ray.shutdown()
    popular = baseline["test"]
    print(
        f"[summary] test HR@10: {config.model.family} {results['test']['hr@10']:.4f} vs popularity "
        f"{popular['hr@10']:.4f}; NDCG@10 {results['test']['ndcg@10']:.4f} vs {popular['ndcg@10']:.4f} "
        f"({time.perf_counter() - started:.0f} s in all)",
        flush=True,
    )
    return {"baseline": baseline, "model": results}


def _train_evaluate_register(
    config, view, manifest, shards, run_dir, tracking_uri, run_id, tags
) -> dict:
    storage = Path(config.output_root).resolve() / "ray"
    name = f"{config.name}-{run_id[:8]}"
    job = {
        "config": config,
        "manifest": manifest,
        "num_item_ids": view["num_item_ids"],
        "candidates": view["candidates"].numpy(),
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "fail_marker": str(storage / name / "fail-injected"),
    }
    result = _train(config, job, shards, storage, name)

    with result.checkpoint.as_directory() as folder:
        progress = json.loads((Path(folder) / PROGRESS_FILE).read_text())
    best_epoch, metric = progress["best_epoch"], config.train.select_metric
    best = next(c for c, m in result.best_checkpoints if m["epoch"] == best_epoch)
    weights = run_dir / "model.safetensors"
    with best.as_directory() as folder:
        weights.write_bytes((Path(folder) / WEIGHTS_FILE).read_bytes())

    # Evaluate: the chosen epoch's model, whole, in this process, on the test items.
    experiment = config.experiment()
    model = build_model(experiment, view["num_item_ids"])
    model.load_state_dict(load_file(weights))
    scorer = ModelScorer(model.eval(), view["candidates"], torch.device("cpu"))
    test = evaluate(
        scorer,
        view["split"].test,
        tuple(experiment.eval.ks),
        batch_size=experiment.eval.batch_size,
        exclude_history=experiment.eval.exclude_history,
    )
    valid = next(h["valid"] for h in progress["history"] if h["epoch"] == best_epoch)
    print(
        f"[test] epoch {best_epoch} (chosen on validation {metric}): "
        + "  ".join(f"{k} {test[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr")),
        flush=True,
    )
    results = {
        "dataset": config.data.dataset,
        "model": config.model.family,
        "protocol": "A",
        "select_metric": metric,
        "best_epoch": best_epoch,
        "valid": valid,
        "test": test,
        "history": progress["history"],
        # Epochs after which training restarted from a checkpoint (a worker died).
        "resumed_after_epochs": progress.get("resumed_after_epochs", []),
    }
    mlflow.log_metrics({**stage_metrics("best_valid", valid), **stage_metrics("test", test)})
    mlflow.log_metrics({"best_epoch": best_epoch, "restarts": len(results["resumed_after_epochs"])})
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    mlflow.log_text(_epoch_table(progress["history"]), "metrics/epochs.csv")
    mlflow.log_artifact(str(run_dir / "metrics.json"), "metrics")
    curve = run_dir / "training_curve.png"
    steps = MetricLogger(tracking_uri, run_id).client.get_metric_history(run_id, "train/loss")
    _curve_png(curve, steps, progress["history"], metric)
    mlflow.log_artifact(str(curve), "plots")

    info = recsys_model.log_model(weights, experiment, view["candidates"], run_dir)
    version, promoted = register_model(
        info.model_uri,
        config.model_name,
        valid_value=valid["ndcg@10"],
        alias=config.pipeline.champion_alias,
        tags=tags,
        tracking_uri=tracking_uri,
    )
    mlflow.set_tags({"registered_model": config.model_name, "model_version": version})
    print(
        f"[mlflow] registered {config.model_name} version {version}"
        + (f", now @{config.pipeline.champion_alias}" if promoted else " (champion kept)"),
        flush=True,
    )
    results.update(model_uri=info.model_uri, model_version=version, promoted=promoted)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.recsys", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", help="YAML config, e.g. configs/recsys/demo.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value, e.g. train.epochs=5 pipeline.num_workers=2 pipeline.tracking_uri=http://127.0.0.1:5000",
    )
    args = parser.parse_args(argv)
    try:
        run(load_config(RecsysJobConfig, args.config, args.overrides))
    except (ConfigError, DataError, TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
