"""The worker loop's evaluation pieces, on 2 gloo processes without Ray: the whole-model
copy of a sharded model, and validation pooled over ranks equal to one process's."""

from __future__ import annotations

import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.recsys_train_loop import evaluate_pooled, whole_model
from recsys.data import JaggedArray, SequenceExamples
from recsys.distributed import shard_model
from recsys.evaluate import evaluate
from recsys.experiment import DataConfig, ExperimentConfig, ModelConfig
from recsys.train import ModelScorer, build_model

WORLD_SIZE = 2
NUM_ITEM_IDS = 60


def _config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(max_len=10),
        model=ModelConfig(family="hstu", embedding_dim=16, num_blocks=1, num_heads=2, dropout=0.0),
    )


def _validation() -> SequenceExamples:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 11, size=37)  # not a multiple of the world size
    items = rng.integers(1, NUM_ITEM_IDS, size=int(lengths.sum()))
    return SequenceExamples(
        user_ids=np.arange(len(lengths)),
        item_ids=JaggedArray.from_lengths(items, lengths),
        targets=rng.integers(1, NUM_ITEM_IDS, size=len(lengths)),
        history=JaggedArray.from_lengths(items, lengths),
    )


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=120),
    )
    try:
        config = _config()
        reference = build_model(config, NUM_ITEM_IDS).eval()
        sharded = shard_model(build_model(config, NUM_ITEM_IDS), ["row_wise"], learning_rate=1e-3)
        whole = whole_model(sharded, config, NUM_ITEM_IDS, torch.device("cpu"))
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(whole.state_dict()[key], value, rtol=0, atol=0)

        examples, candidates = _validation(), torch.arange(1, NUM_ITEM_IDS)
        mine = examples.take(np.arange(rank, len(examples), WORLD_SIZE))  # each rank its own users
        pooled = evaluate_pooled(whole, mine, candidates, config, torch.device("cpu"))
        single = evaluate(ModelScorer(reference, candidates, torch.device("cpu")), examples)
        assert pooled["num_users"] == len(examples)
        assert pooled == pytest.approx(single, rel=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_whole_model_and_pooled_validation_match_a_single_process():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port,), nprocs=WORLD_SIZE, join=True)
