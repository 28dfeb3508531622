"""End-to-end single-process training: beats popularity, resumes exactly, protocol B."""

from __future__ import annotations

import json

import pytest
import torch

from recsys.baselines import popularity_scores
from recsys.config import ConfigError, load_config
from recsys.data import leave_one_out, load_sequences
from recsys.evaluate import evaluate
from recsys.experiment import ExperimentConfig
from recsys.train import run

TINY = [
    "data.dataset=synthetic",
    "data.options={num_users: 400, num_items: 150, mean_length: 12, seed: 3}",
    "data.max_len=20",
    "model.embedding_dim=16",
    "model.num_blocks=1",
    "train.batch_size=64",
    "train.num_negatives=32",
    "train.shared_negatives=true",
]


def _config(tmp_path, *overrides) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, [f"output_root={tmp_path}", *overrides])


@pytest.mark.shared_data
@pytest.mark.slow
def test_hstu_beats_popularity_on_ml100k(tmp_path, prepared):
    folder = prepared("ml-100k")
    config = _config(
        tmp_path,
        "name=ml100k",
        "data.dataset=ml-100k",
        f"data.prepared_dir={folder}",
        "data.max_len=100",
        "model.embedding_dim=32",
        "train.epochs=10",
        "train.batch_size=32",
        "train.learning_rate=0.002",
        "train.num_negatives=256",
        "train.shared_negatives=true",
    )
    results = run(config)
    data = load_sequences(folder)
    split = leave_one_out(data, max_len=100)
    counts = popularity_scores(leave_one_out(data).train, data.num_item_ids)  # untruncated counts
    popular = evaluate(lambda batch: counts.expand(len(batch), -1), split.valid)
    print(f"popularity valid HR@10 {popular['hr@10']:.4f}, HSTU {results['valid']['hr@10']:.4f}")
    assert results["valid"]["hr@10"] > 1.3 * popular["hr@10"]
    assert set(results["test"]) >= {"hr@10", "ndcg@10", "hr@200", "ndcg@200", "mrr"}


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    straight = run(_config(tmp_path, "name=straight", "train.epochs=3", *TINY))
    run(_config(tmp_path, "name=resumed", "train.epochs=1", *TINY))  # "interrupted" after epoch 1
    resumed = run(_config(tmp_path, "name=resumed", "train.epochs=3", *TINY))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    with pytest.raises(ConfigError, match="different config"):
        run(_config(tmp_path, "name=resumed", "train.epochs=3", "train.learning_rate=0.01", *TINY))


def test_protocol_b_retrains_for_the_chosen_epochs(tmp_path):
    results = run(
        _config(
            tmp_path, "name=b", "train.epochs=2", "eval.protocol=B", "model.family=sasrec", *TINY
        )
    )
    assert len(results["retrain_history"]) == results["best_epoch"]
    assert results["test_users_dropped"] >= 0
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["test"] == results["test"]
    state = torch.load(tmp_path / "b" / "retrain-last.pt", weights_only=False)
    assert state["epoch"] == results["best_epoch"]
