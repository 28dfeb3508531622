"""What every Ray Train worker runs: one rank of sharded (TorchRec DMP) training.

Each rank reads its own shard of users (a Ray dataset the driver split by
``user_id % world_size``), splits it leave-one-out, and trains the shared model
with the item table sharded over the ranks. Per epoch, every rank evaluates its
own validation users with a whole copy of the model (full ranking) and the
ranks' target ranks are pooled, so the metrics equal a single-process
evaluation over all users. Then every rank writes its part of a Ray Train
checkpoint (``save_sharded`` pieces, its RNG state; rank 0 also the whole
weights and the history) and reports it.

Resuming (after a worker died, ``FailureConfig.max_failures``) restarts every
rank from the last reported checkpoint, at the start of the epoch after it;
the data order depends only on (seed, epoch) and the RNG states come back, so
the resumed run takes the same steps an uninterrupted one takes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from recsys.data import SequenceLoader, leave_one_out
from recsys.data.store import sequences_from_table
from recsys.distributed import build_optimizer, load_sharded, save_sharded, shard_model
from recsys.evaluate import collect_ranks
from recsys.losses import NegativeSampler
from recsys.metrics import ranking_metrics
from recsys.models import ITEM_TABLE
from recsys.train import ModelScorer, build_model

from .tracking import MetricLogger, stage_metrics

SHARD_PREFIX = "users_rank_"  # Ray dataset names, one per rank
TABLE_KEY = f"item_embeddings.collection.embeddings.{ITEM_TABLE}.weight"
SHARDED_DIR, WEIGHTS_FILE, PROGRESS_FILE = "sharded", "model.safetensors", "progress.json"


def _read_shard(rank: int, manifest: dict, keep_timestamps: bool):
    shard = ray.train.get_dataset_shard(f"{SHARD_PREFIX}{rank}")
    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(tables).sort_by("user_id")  # the same order on every attempt
    data = sequences_from_table(table, manifest)
    if not keep_timestamps:
        data = type(data)(data.user_ids, data.item_ids, None, data.manifest)
    return data


def _all_gather(value):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def whole_model(sharded, experiment, num_item_ids: int, device):
    """An unsharded copy of the sharded model on this rank (collective: every rank calls it)."""
    with torch.no_grad():
        table = sharded.module.item_embeddings.lookup(torch.arange(num_item_ids, device=device))
    state = {k: v for k, v in sharded.state_dict().items() if k != TABLE_KEY}
    with torch.random.fork_rng(devices=[]):  # build_model seeds torch: keep dropout's stream
        model = build_model(experiment, num_item_ids)
    model.load_state_dict({**state, TABLE_KEY: table.detach()})
    return model.to(device).eval()


def evaluate_pooled(model, examples, candidates, experiment, device) -> dict:
    """Full-ranking metrics over every rank's examples (each rank ranks its own)."""
    ranks = collect_ranks(
        ModelScorer(model, candidates, device),
        examples,
        batch_size=experiment.eval.batch_size,
        exclude_history=experiment.eval.exclude_history,
    )
    pooled = torch.cat(_all_gather(ranks.cpu()))
    return {**ranking_metrics(pooled, tuple(experiment.eval.ks)), "num_users": int(pooled.numel())}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_loop(job: dict) -> None:
    """Ray Train entry point; ``job`` is built by ``pipelines.recsys``."""
    config = job["config"]
    experiment = config.experiment()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    num_item_ids = job["num_item_ids"]
    lr, wd = experiment.train.learning_rate, experiment.train.weight_decay
    keep_time = experiment.model.family == "hstu" and experiment.model.time_bias

    split = leave_one_out(_read_shard(rank, job["manifest"], keep_time), experiment.data.max_len)
    candidates = torch.from_numpy(job["candidates"].copy())  # observed in the whole dataset

    model = shard_model(
        build_model(experiment, num_item_ids),
        experiment.sharding.types,
        learning_rate=lr,
        weight_decay=wd,
        device=device,
    )
    optimizer = build_optimizer(model, lr, wd)
    sampler = NegativeSampler(candidates, seed=experiment.seed + 1 + rank)  # rank's own negatives
    loader = SequenceLoader(
        split.train,
        experiment.train.batch_size,
        shuffle=True,
        seed=experiment.seed,
        drop_last=True,
        bucket_by_length=experiment.train.bucket_by_length,
    )
    # Every rank must take the same number of steps (each is a collective): the fewest any has.
    steps = torch.tensor([len(loader)])
    dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    steps = int(steps)
    if experiment.train.max_steps is not None:
        steps = min(steps, experiment.train.max_steps)
    if steps == 0:
        raise ValueError(
            f"rank {rank} has fewer than {experiment.train.batch_size} training sequences: "
            "use a smaller train.batch_size or fewer pipeline.num_workers"
        )

    progress = {"epoch": 0, "history": [], "best_epoch": 0, "best_value": -math.inf}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            load_sharded(model, optimizer, folder / SHARDED_DIR)
            rng = torch.load(folder / f"rng-rank-{rank}.pt", weights_only=False)
            progress = json.loads((folder / PROGRESS_FILE).read_text())
        progress.setdefault("resumed_after_epochs", []).append(progress["epoch"])
        sampler.generator.set_state(rng["sampler"])
        torch.set_rng_state(rng["torch"])  # dropout continues where it stopped
        if rank == 0:
            print(
                f"[train] resuming after epoch {progress['epoch']} from {checkpoint.path}",
                flush=True,
            )

    pipeline = config.pipeline
    logger = MetricLogger(job["tracking_uri"], job["run_id"]) if rank == 0 else None
    epochs, metric = experiment.train.epochs, experiment.train.select_metric
    total_steps = epochs * steps
    started = time.perf_counter()
    steps_done_here = 0  # this attempt's steps, for the rate and the ETA
    for epoch in range(progress["epoch"] + 1, epochs + 1):
        loader.set_epoch(epoch)
        model.train()
        epoch_started, window_started = time.perf_counter(), time.perf_counter()
        window_loss, epoch_loss, sequences = torch.zeros(()), 0.0, 0
        for step, batch in zip(range(steps), loader, strict=False):
            global_step = (epoch - 1) * steps + step + 1
            if pipeline.fail_at_step == global_step and rank == 1:
                marker = Path(job["fail_marker"])
                if not marker.exists():  # once per run: the restarted worker carries on
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    # Ray Train's controller collects reported checkpoints when it polls the
                    # workers (every 2 s): a worker dying sooner after a report loses that
                    # checkpoint and the run resumes from the one before (still correct, but
                    # the test wants the resume after the last epoch).
                    time.sleep(6)
                    print(
                        f"[train] rank 1: exiting at step {global_step} (pipeline.fail_at_step)",
                        flush=True,
                    )
                    os._exit(1)
            values = batch.item_ids.values().to(device)
            offsets = batch.item_ids.offsets().to(device)
            timestamps = None if batch.timestamps is None else batch.timestamps.values().to(device)
            negatives = None
            if experiment.train.loss == "sampled_softmax":
                shape = (experiment.train.num_negatives,)
                if not experiment.train.shared_negatives:
                    shape = (batch.num_tokens - len(batch), *shape)
                negatives = sampler.sample(shape).to(device)
            loss = model(values, offsets, timestamps, negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window_loss += loss.detach().cpu()
            epoch_loss += float(loss)
            sequences += len(batch)
            steps_done_here += 1
            if (step + 1) % pipeline.log_every_steps == 0 or step + 1 == steps:
                dist.all_reduce(window_loss)  # the mean over ranks, as the step optimises
                window = (step % pipeline.log_every_steps) + 1
                now = time.perf_counter()
                if rank == 0:
                    rate = window / (now - window_started)
                    overall = steps_done_here / (now - started)
                    eta = (total_steps - global_step) / overall
                    mean_loss = float(window_loss) / window / world_size
                    logger.log(
                        {
                            "train/loss": mean_loss,
                            "train/lr": lr,
                            "train/steps_per_second": rate,
                            "train/sequences_per_second": rate
                            * experiment.train.batch_size
                            * world_size,
                        },
                        step=global_step,
                    )
                    print(
                        f"[train] epoch {epoch}/{epochs} step {step + 1}/{steps} loss {mean_loss:.4f} "
                        f"| {rate:.2f} steps/s | ETA {_duration(eta)} (training, without evaluation)",
                        flush=True,
                    )
                window_loss, window_started = torch.zeros(()), time.perf_counter()
        seconds = time.perf_counter() - epoch_started

        eval_started = time.perf_counter()
        whole = whole_model(model, experiment, num_item_ids, device)
        valid = evaluate_pooled(whole, split.valid, candidates, experiment, device)
        loss_sum = torch.tensor([epoch_loss / steps])
        dist.all_reduce(loss_sum)
        record = {
            "epoch": epoch,
            "loss": float(loss_sum) / world_size,
            "seconds": round(seconds, 2),
            "sequences_per_second": round(sequences * world_size / seconds, 1),
            "eval_seconds": round(time.perf_counter() - eval_started, 2),
            "valid": valid,
        }
        progress["history"].append(record)
        progress["epoch"] = epoch
        if valid[metric] > progress["best_value"]:
            progress["best_epoch"], progress["best_value"] = epoch, valid[metric]
        reported = {
            "epoch": epoch,
            "train/epoch_loss": record["loss"],
            **stage_metrics("valid", {k: v for k, v in valid.items() if k != "num_users"}),
        }
        if rank == 0:
            logger.log({**reported, "train/epoch_seconds": seconds}, step=epoch * steps)
            shown = "  ".join(f"{k} {valid[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr"))
            print(
                f"[valid] epoch {epoch}/{epochs}: {shown} (best {metric} {progress['best_value']:.4f} "
                f"at epoch {progress['best_epoch']}; {record['eval_seconds']:.1f} s)",
                flush=True,
            )
        with tempfile.TemporaryDirectory(prefix="genrec-ckpt-") as folder:
            folder = Path(folder)
            save_sharded(model, optimizer, folder / SHARDED_DIR)
            torch.save(
                {"sampler": sampler.generator.get_state(), "torch": torch.get_rng_state()},
                folder / f"rng-rank-{rank}.pt",
            )
            if rank == 0:
                (folder / PROGRESS_FILE).write_text(json.dumps(progress, indent=2))
                state = {k: v.contiguous().cpu() for k, v in whole.state_dict().items()}
                save_file(state, folder / WEIGHTS_FILE)
            ray.train.report(
                reported,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"epoch-{epoch:04d}",
            )
        patience = experiment.train.patience
        if patience is not None and epoch - progress["best_epoch"] >= patience:
            if rank == 0:
                print(
                    f"[train] no {metric} gain for {patience} epochs: stopping after epoch {epoch}"
                )
            break
