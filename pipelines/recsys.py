"""The main recommender job: ``python -m pipelines.recsys CONFIG.yaml [key=value ...]``.

Steps: prepare the dataset as Parquet (reused when already prepared with the
same options) -> leave-one-out split -> full-ranking evaluation of the
popularity baseline -> train the configured model (``recsys.train``), choosing
the epoch on validation -> test once. Everything lands in ``<output_root>/<name>/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from recsys.baselines import popularity_scores
from recsys.cli import experiment_main
from recsys.config import to_dict
from recsys.data import SequenceLoader, ensure_prepared, leave_one_out, load_sequences
from recsys.evaluate import evaluate
from recsys.experiment import ExperimentConfig
from recsys.train import run as train_and_test


def run(config: ExperimentConfig) -> dict:
    run_dir = Path(config.output_root) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    started = time.perf_counter()
    data_dir = Path(
        config.data.prepared_dir or Path(config.output_root) / "data" / config.data.dataset
    )
    manifest = ensure_prepared(
        config.data.dataset, data_dir, config.data.source, config.data.options
    )
    print(
        f"[data] {manifest['dataset']}: {manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{manifest['num_interactions']:,} interactions ({data_dir})"
    )
    data = load_sequences(data_dir)
    split = leave_one_out(data, max_len=config.data.max_len)
    loader = SequenceLoader(split.train, 128, shuffle=True, seed=config.seed)
    padded = [batch.padded_fraction for batch in loader]
    print(
        f"[split] train {len(split.train):,} sequences, valid/test {len(split.test):,} users, "
        f"{split.dropped_users} users too short; {len(loader)} train batches of 128, "
        f"share of padding if padded per batch: {np.mean(padded):.1%}"
    )

    counts = popularity_scores(leave_one_out(data).train, data.num_item_ids)  # untruncated
    scorer = lambda batch: counts.expand(len(batch), -1)  # noqa: E731
    options = dict(batch_size=config.eval.batch_size, exclude_history=config.eval.exclude_history)
    results = {
        "popularity": {
            "valid": evaluate(scorer, split.valid, tuple(config.eval.ks), **options),
            "test": evaluate(scorer, split.test, tuple(config.eval.ks), **options),
        },
        "dataset": manifest["dataset"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    for stage in ("valid", "test"):
        m = results["popularity"][stage]
        print(
            f"[popularity] {stage}: HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  MRR {m['mrr']:.4f}"
        )
    (run_dir / "baseline.json").write_text(json.dumps(results, indent=2))

    trained = train_and_test(config)
    popular = results["popularity"]["test"]
    print(
        f"[summary] test HR@10: {config.model.family} {trained['test']['hr@10']:.4f} vs popularity "
        f"{popular['hr@10']:.4f}; NDCG@10 {trained['test']['ndcg@10']:.4f} vs {popular['ndcg@10']:.4f} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return {"baseline": results, "model": trained}


def main(argv: list[str] | None = None) -> int:
    return experiment_main("python -m pipelines.recsys", __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    sys.exit(main())
