"""Train one recommender in one process: ``python -m recsys.train CONFIG.yaml [key=value ...]``.

Writes ``<output_root>/<name>/``: ``config.yaml``, ``metrics.json`` (per-epoch
validation history, the chosen epoch, test metrics computed once with that
epoch's model), ``model.safetensors`` (the chosen weights) and ``last.pt``
(everything needed to resume an interrupted run; rerunning the same command
continues from it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .cli import experiment_main
from .config import ConfigError, to_dict
from .data import SequenceLoader, ensure_prepared, leave_one_out, load_sequences
from .data.splits import SequenceExamples, retrain_split
from .evaluate import evaluate
from .experiment import ExperimentConfig
from .losses import NegativeSampler
from .models import SequentialRecommender


def _replace_atomically(path: Path, write) -> None:
    """Write via a temporary name so a run killed mid-write never leaves a torn checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _replace_atomically(path, lambda tmp: save_file(state, tmp))


def _resume_key(config: dict | None) -> dict | None:
    """The parts of a config that decide training; a resumed run must share them.

    More epochs or another patience, another evaluation protocol, run name or
    output folder do not change the training trajectory, so they may differ.
    """
    if config is None:
        return None
    train = {k: v for k, v in config["train"].items() if k not in ("epochs", "patience")}
    evaluation = {k: v for k, v in config["eval"].items() if k not in ("protocol", "batch_size")}
    kept = {k: v for k, v in config.items() if k not in ("name", "output_root")}
    return {**kept, "train": train, "eval": evaluation}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: ExperimentConfig, num_item_ids: int) -> SequentialRecommender:
    torch.manual_seed(config.seed)
    return SequentialRecommender(
        config.model,
        num_item_ids,
        max_seq_len=config.data.max_len,
        temperature=config.train.temperature,
    )


def observed_items(examples: SequenceExamples, *more: SequenceExamples) -> torch.Tensor:
    """Item ids that occur in the data: the candidates for ranking and for negatives."""
    arrays = [examples.item_ids.values] + [m.item_ids.values for m in more]
    arrays += [m.targets for m in (examples, *more) if m.targets is not None]
    return torch.from_numpy(np.unique(np.concatenate(arrays)))


class ModelScorer:
    """Scores every item id for a batch of users; ids that never occur score -inf."""

    def __init__(
        self, model: SequentialRecommender, candidates: torch.Tensor, device: torch.device
    ):
        self.model = model
        self.device = device
        num_ids = model.item_embeddings.num_item_ids
        with torch.no_grad():
            self.items = model.item_vectors(torch.arange(num_ids, device=device))
        self.blocked = torch.ones(num_ids, dtype=torch.bool, device=device)
        self.blocked[candidates.to(device)] = False

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        timestamps = None if batch.timestamps is None else batch.timestamps.values().to(self.device)
        users = self.model.user_vectors(
            batch.item_ids.values().to(self.device),
            batch.item_ids.offsets().to(self.device),
            timestamps,
        )
        return (users @ self.items.T).masked_fill(self.blocked, -math.inf)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float
    sequences_per_second: float
    tokens_per_second: float
    mean_padded_fraction: float
    valid: dict = field(default_factory=dict)
    eval_seconds: float = 0.0  # full ranking of every validation user


def train_epoch(
    model, optimizer, loader, sampler, config, device, progress_label: str
) -> EpochStats:
    model.train()
    losses, tokens, sequences, padded = [], 0, 0, []
    started = time.perf_counter()
    steps = (
        len(loader) if config.train.max_steps is None else min(len(loader), config.train.max_steps)
    )
    bar = tqdm(total=steps, desc=progress_label, unit="batch", leave=False, mininterval=2.0)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        values = batch.item_ids.values().to(device)
        offsets = batch.item_ids.offsets().to(device)
        timestamps = None if batch.timestamps is None else batch.timestamps.values().to(device)
        predicting = batch.num_tokens - len(batch)  # every position but each sequence's last
        shape = (
            (config.train.num_negatives,)
            if config.train.shared_negatives
            else (predicting, config.train.num_negatives)
        )
        negatives = (
            sampler.sample(shape).to(device) if config.train.loss == "sampled_softmax" else None
        )
        loss = model(values, offsets, timestamps, negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        tokens += batch.num_tokens
        sequences += len(batch)
        padded.append(batch.padded_fraction)
        bar.update()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    seconds = time.perf_counter() - started
    return EpochStats(
        epoch=-1,
        loss=float(np.mean(losses)) if losses else float("nan"),
        seconds=round(seconds, 2),
        sequences_per_second=round(sequences / seconds, 1),
        tokens_per_second=round(tokens / seconds, 1),
        mean_padded_fraction=round(float(np.mean(padded)), 4) if padded else 0.0,
    )


def _evaluate(model, examples, candidates, config, device) -> dict:
    model.eval()
    scorer = ModelScorer(model, candidates, device)
    return evaluate(
        scorer,
        examples,
        tuple(config.eval.ks),
        batch_size=config.eval.batch_size,
        exclude_history=config.eval.exclude_history,
    )


def _format(metrics: dict) -> str:
    return "  ".join(
        f"{k.upper()} {v:.4f}" for k, v in metrics.items() if k in ("hr@10", "ndcg@10", "mrr")
    )


def fit(
    config: ExperimentConfig,
    train: SequenceExamples,
    valid: SequenceExamples | None,
    candidates: torch.Tensor,
    num_item_ids: int,
    run_dir: Path,
    epochs: int,
    label: str,
) -> tuple[SequentialRecommender, list[EpochStats], int]:
    """Train for ``epochs`` (early-stopping on ``valid`` when given); return the chosen model.

    Resumes from ``run_dir/<label>-last.pt`` when it exists.
    """
    device = resolve_device(config.train.device)
    model = build_model(config, num_item_ids).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )
    sampler = NegativeSampler(candidates, seed=config.seed + 1)
    loader = SequenceLoader(
        train,
        config.train.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=False,
        bucket_by_length=config.train.bucket_by_length,
    )
    history: list[EpochStats] = []
    best_epoch, best_value = 0, -math.inf
    last_path, best_path = run_dir / f"{label}-last.pt", run_dir / f"{label}-best.safetensors"
    start_epoch = 1
    if last_path.exists():
        state = torch.load(last_path, weights_only=False)
        if _resume_key(state.get("config")) != _resume_key(to_dict(config)):
            raise ConfigError(
                f"{last_path} was written by a different config; resuming would mix two runs. "
                "Use another name=..., or delete that folder to start over."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])  # dropout continues exactly where it stopped
        history = [EpochStats(**h) for h in state["history"]]
        best_epoch, best_value = state["best_epoch"], state["best_value"]
        start_epoch = state["epoch"] + 1
        print(f"[{label}] resuming after epoch {state['epoch']} from {last_path}")

    metric = config.train.select_metric
    patience = config.train.patience
    if valid is not None and patience is not None and start_epoch - 1 - best_epoch >= patience:
        start_epoch = epochs + 1  # the resumed run had already stopped early
    for epoch in range(start_epoch, epochs + 1):
        loader.set_epoch(epoch)
        stats = train_epoch(
            model, optimizer, loader, sampler, config, device, f"{label} epoch {epoch}"
        )
        stats.epoch = epoch
        message = (
            f"[{label}] epoch {epoch}/{epochs} loss {stats.loss:.4f}  {stats.sequences_per_second:.0f} seq/s  "
            f"{stats.tokens_per_second:.0f} tok/s"
        )
        if valid is not None:
            eval_started = time.perf_counter()
            stats.valid = _evaluate(model, valid, candidates, config, device)
            stats.eval_seconds = round(time.perf_counter() - eval_started, 2)
            message += f"  valid {_format(stats.valid)} ({stats.eval_seconds:.1f} s)"
            if stats.valid[metric] > best_value:
                best_epoch, best_value = epoch, stats.valid[metric]
                _save_weights(model, best_path)
        else:
            best_epoch = epoch
        history.append(stats)
        print(message, flush=True)
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [vars(h) for h in history],
            "best_epoch": best_epoch,
            "best_value": best_value,
            "epoch": epoch,
            "config": to_dict(config),
        }
        _replace_atomically(last_path, lambda tmp, state=checkpoint: torch.save(state, tmp))
        if valid is not None and patience is not None and epoch - best_epoch >= patience:
            print(
                f"[{label}] no {metric} gain for {patience} evaluations: stopping after epoch {epoch}"
            )
            break
    if valid is not None and best_path.exists():
        model.load_state_dict(load_file(best_path))
    return model, history, best_epoch


def run(config: ExperimentConfig) -> dict:
    run_dir = Path(config.output_root) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    data_dir = Path(
        config.data.prepared_dir or Path(config.output_root) / "data" / config.data.dataset
    )
    ensure_prepared(config.data.dataset, data_dir, config.data.source, config.data.options)
    data = load_sequences(data_dir)
    if not config.model.time_bias or config.model.family != "hstu":
        data = type(data)(data.user_ids, data.item_ids, None, data.manifest)  # no timestamps needed
    split = leave_one_out(data, max_len=config.data.max_len)
    candidates = observed_items(split.train, split.valid, split.test)
    started = time.perf_counter()

    model, history, best_epoch = fit(
        config,
        split.train,
        split.valid,
        candidates,
        data.num_item_ids,
        run_dir,
        config.train.epochs,
        "select",
    )
    device = resolve_device(config.train.device)
    results = {
        "dataset": config.data.dataset,
        "model": config.model.family,
        "protocol": config.eval.protocol,
        "select_metric": config.train.select_metric,
        "best_epoch": best_epoch,
        "valid": next(h.valid for h in history if h.epoch == best_epoch),
        "history": [vars(h) for h in history],
    }
    if config.eval.protocol == "A":
        results["test"] = _evaluate(model, split.test, candidates, config, device)
    else:
        final = retrain_split(data, max_len=config.data.max_len)
        model, retrain_history, _ = fit(
            config, final.train, None, candidates, data.num_item_ids, run_dir, best_epoch, "retrain"
        )
        results["retrain_history"] = [vars(h) for h in retrain_history]
        results["test"] = _evaluate(model, final.test, candidates, config, device)
        results["test_users_dropped"] = final.dropped_users
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / "model.safetensors"
    )
    # The ids a server may recommend (seen in the data): serving.loading reads it.
    np.save(run_dir / "candidates.npy", candidates.numpy())
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"[test] protocol {config.eval.protocol}, epoch {best_epoch}: {_format(results['test'])}")
    print(f"[done] {run_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    return experiment_main("python -m recsys.train", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    sys.exit(main())
