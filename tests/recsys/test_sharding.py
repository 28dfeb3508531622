"""Sharded training (TorchRec DMP, 2 gloo processes on CPU) equals single-process training.

Each rank trains on its own share of the batches; the reference is one
unsharded model stepping on the mean of the ranks' losses (see the gradient
notes in recsys/distributed.py). Both start from the same weights (seed 0)
and see the same batches and negatives. Workers run in spawned processes, so every
assertion inside them reaches pytest as the worker's traceback.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.data import JaggedArray, SequenceExamples, SequenceLoader
from recsys.distributed import (
    build_optimizer,
    load_into_single_process,
    load_sharded,
    save_sharded,
    shard_model,
    single_process_optimizer,
)
from recsys.experiment import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from recsys.losses import NegativeSampler
from recsys.train import build_model

WORLD_SIZE = 2
NUM_ITEM_IDS = 100
BATCH_SIZE = 6
STEPS = 3
NUM_NEGATIVES = 16
# Large enough that three steps visibly move the weights and the loss.
LEARNING_RATE = 0.01
TABLE = "item_embeddings.collection.embeddings.item_table.weight"
# Per-step losses of the two runs: the same arithmetic up to summation order.
LOSS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def _config(family: str, ranking_head: bool = False) -> ExperimentConfig:
    return ExperimentConfig(
        seed=0,
        data=DataConfig(max_len=20),
        # No dropout: each process draws its own masks, so no two runs would agree.
        model=ModelConfig(
            family=family,
            embedding_dim=16,
            num_blocks=1,
            num_heads=2,
            dropout=0.0,
            ranking_head=ranking_head,
        ),
        train=TrainConfig(learning_rate=LEARNING_RATE, num_negatives=NUM_NEGATIVES),
    )


def _examples() -> SequenceExamples:
    rng = np.random.default_rng(0)
    count = WORLD_SIZE * BATCH_SIZE * STEPS
    lengths = rng.integers(2, 21, size=count)
    items = rng.integers(1, NUM_ITEM_IDS, size=int(lengths.sum()))
    times = np.concatenate([np.sort(rng.integers(0, 10**6, size=n)) for n in lengths])
    return SequenceExamples(
        user_ids=np.arange(count),
        item_ids=JaggedArray.from_lengths(items, lengths),
        timestamps=JaggedArray.from_lengths(times, lengths),
    )


def _rank_batches(rank: int) -> list[tuple[torch.Tensor, ...]]:
    """(item ids, offsets, timestamps, negatives) of every step of one rank, as training sees them."""
    loader = SequenceLoader(
        _examples(),
        BATCH_SIZE,
        shuffle=True,
        seed=0,
        rank=rank,
        world_size=WORLD_SIZE,
        drop_last=True,
    )
    sampler = NegativeSampler(torch.arange(1, NUM_ITEM_IDS), seed=1 + rank)
    batches = []
    for batch in loader:
        predicting = batch.num_tokens - len(batch)
        batches.append(
            (
                batch.item_ids.values(),
                batch.item_ids.offsets(),
                batch.timestamps.values(),
                sampler.sample((predicting, NUM_NEGATIVES)),
            )
        )
    assert len(batches) == STEPS
    return batches


def _spawn(worker, *args) -> None:
    # The port is chosen here, once: each child would derive a different one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(port, *args), nprocs=WORLD_SIZE, join=True)


def _init(rank: int, port: int) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=120),
    )


def _local_pieces(tensor):
    """(this rank's block, its offsets in the full tensor) of a sharded or replicated tensor."""
    if isinstance(tensor, ShardedTensor):
        for shard in tensor.local_shards():
            yield shard.tensor, shard.metadata.shard_offsets
    else:
        yield tensor, [0] * tensor.dim()


def _assert_matches_full(tensor, full: torch.Tensor, what: str) -> None:
    for block, offsets in _local_pieces(tensor):
        region = tuple(slice(o, o + n) for o, n in zip(offsets, block.shape, strict=True))
        torch.testing.assert_close(
            block,
            full[region],
            **WEIGHT_TOLERANCE,
            msg=lambda m, offsets=offsets: f"{what}, block at {offsets}: {m}",
        )


def _train_sharded(config, sharding_type, batches):
    # Each rank draws its own initial weights: the sharded model must still be
    # rank 0's, which is the reference's.
    rank_config = replace(config, seed=config.seed + dist.get_rank())
    model = shard_model(
        build_model(rank_config, NUM_ITEM_IDS), [sharding_type], learning_rate=LEARNING_RATE
    )
    optimizer = build_optimizer(model, LEARNING_RATE)
    reference_table = build_model(config, NUM_ITEM_IDS).state_dict()[TABLE]
    _assert_matches_full(model.state_dict()[TABLE], reference_table, "initial table")
    losses = []
    for step in range(STEPS):
        loss = model(*batches[step])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return model, optimizer, torch.stack(losses)


def _train_reference(config, batches_per_rank):
    model = build_model(config, NUM_ITEM_IDS)
    optimizer = single_process_optimizer(model, LEARNING_RATE)
    losses = []
    for step in range(STEPS):
        rank_losses = [model(*batches[step]) for batches in batches_per_rank]
        optimizer.zero_grad(set_to_none=True)
        (sum(rank_losses) / WORLD_SIZE).backward()
        optimizer.step()
        losses.append(torch.stack(rank_losses).detach())
    return model, optimizer, torch.stack(losses, dim=1)  # (rank, step)


def _vectors(model, batch):
    """User vectors of a batch and every item's vector (a collective when sharded)."""
    values, offsets, timestamps, _ = batch
    with torch.no_grad():
        return model.user_vectors(values, offsets, timestamps), model.item_vectors(
            torch.arange(NUM_ITEM_IDS)
        )


def _equivalence_worker(
    rank: int, port: int, family: str, sharding_type: str, ranking_head: bool
) -> None:
    _init(rank, port)
    try:
        config = _config(family, ranking_head)
        batches = [_rank_batches(r) for r in range(WORLD_SIZE)]
        model, optimizer, losses = _train_sharded(config, sharding_type, batches[rank])
        every_rank = [torch.empty_like(losses) for _ in range(WORLD_SIZE)]
        dist.all_gather(every_rank, losses)

        # Every rank trains the same reference and checks its own pieces against it.
        reference, reference_optimizer, reference_losses = _train_reference(config, batches)
        torch.testing.assert_close(torch.stack(every_rank), reference_losses, **LOSS_TOLERANCE)
        # The table after three steps.
        _assert_matches_full(model.state_dict()[TABLE], reference.state_dict()[TABLE], "table")
        # Adagrad's sum of squared gradients scales with the gradient (its updates
        # do not): equal sums mean the table's gradients are averaged over ranks
        # like DDP's, not summed. A rank holding no piece of the table has no state.
        squared = optimizer.state_dict()["state"].get(TABLE, {})
        reference_squared = reference_optimizer.state_dict()["state"][TABLE]["sum"]
        for accumulator in squared.values():
            _assert_matches_full(accumulator, reference_squared, "Adagrad sum of squares")
        checked = torch.tensor([len(squared)])
        dist.all_reduce(checked)
        assert checked.item() >= 1, "no rank holds the table's optimizer state"
        # The dense part is compared by what it computes, not parameter by parameter:
        # SASRec's key bias cannot change a softmax, so its gradient is rounding noise
        # (~1e-9) that Adam scales up to steps of size lr, differently in each run.
        model.eval()
        reference.eval()
        probe = batches[0][0]
        for got, want in zip(
            _vectors(model.module, probe), _vectors(reference, probe), strict=True
        ):
            torch.testing.assert_close(got, want, **WEIGHT_TOLERANCE)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize(
    "family, sharding_type, ranking_head",
    [
        ("hstu", "table_wise", False),
        ("hstu", "column_wise", False),
        ("hstu", "row_wise", False),
        ("sasrec", "row_wise", False),
        # The ranking loss reuses forward's one lookup: same collectives on every rank.
        ("hstu", "row_wise", True),
    ],
)
def test_sharded_training_matches_single_process(family, sharding_type, ranking_head):
    _spawn(_equivalence_worker, family, sharding_type, ranking_head)


def _step_and_probe(model, optimizer, batch, probe):
    """One more training step, then the probe's vectors (eval mode, back to train after)."""
    loss = model(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.eval()
    vectors = _vectors(model.module, probe)
    model.train()
    return vectors


def _checkpoint_worker(rank: int, port: int, folder: str) -> None:
    _init(rank, port)
    try:
        config = _config("hstu")
        batches = _rank_batches(rank)
        probe = _rank_batches(0)[0]  # the same users on every rank
        model, optimizer, _ = _train_sharded(config, "row_wise", batches)
        save_sharded(model, optimizer, f"{folder}/checkpoint")
        model.eval()
        saved = _vectors(model.module, probe)
        model.train()
        if rank == 0:  # for the single-process load in the parent
            torch.save({"probe": probe, "vectors": saved}, f"{folder}/expected.pt")
        # What the saved run does next: the loaded copies must do the same, which
        # they can only if the optimizer state (Adam moments, Adagrad sums) came back.
        after_step = _step_and_probe(model, optimizer, batches[0], probe)

        # Into the plan that saved it (bit for bit), and into another one (DCP reshards).
        for plan, tolerance in (
            ("row_wise", {"rtol": 0, "atol": 0}),
            ("column_wise", WEIGHT_TOLERANCE),
        ):
            # Another seed, so that everything the fresh model knows comes from the checkpoint.
            fresh = shard_model(
                build_model(replace(config, seed=1), NUM_ITEM_IDS),
                [plan],
                learning_rate=LEARNING_RATE,
            )
            fresh_optimizer = build_optimizer(fresh, LEARNING_RATE)
            load_sharded(fresh, fresh_optimizer, f"{folder}/checkpoint")
            fresh.eval()
            torch.testing.assert_close(_vectors(fresh.module, probe), saved, **tolerance)
            fresh.train()
            loaded_step = _step_and_probe(fresh, fresh_optimizer, batches[0], probe)
            torch.testing.assert_close(loaded_step, after_step, **tolerance)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_checkpoint_round_trip(tmp_path):
    _spawn(_checkpoint_worker, str(tmp_path))
    # A serving process: no process group, the whole table in one model.
    expected = torch.load(tmp_path / "expected.pt")
    model = load_into_single_process(tmp_path / "checkpoint", _config("hstu"), NUM_ITEM_IDS).eval()
    torch.testing.assert_close(
        _vectors(model, expected["probe"]), expected["vectors"], **WEIGHT_TOLERANCE
    )


def test_data_parallel_is_refused_on_cpu():
    """FBGEMM's CPU dense kernel pools every bag: a replicated item table gives one row per batch."""
    model = build_model(_config("hstu"), NUM_ITEM_IDS)
    with pytest.raises(ValueError, match="data_parallel"):
        shard_model(model, ["row_wise", "data_parallel"], learning_rate=LEARNING_RATE)
