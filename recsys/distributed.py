"""Shard the item table over ranks with TorchRec's ``DistributedModelParallel``.

One process per rank; every rank runs the same code::

    dist.init_process_group("gloo" if device.type == "cpu" else "nccl")  # or torchrun / Ray Train
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = build_model(config, num_item_ids)  # same seed on every rank
    lr, wd = config.train.learning_rate, config.train.weight_decay
    model = shard_model(model, config.sharding.types, learning_rate=lr, weight_decay=wd, device=device)
    optimizer = build_optimizer(model, learning_rate=lr, weight_decay=wd)
    sampler = NegativeSampler(candidates, seed=config.seed + 1 + rank)  # rank's own negatives
    loader = SequenceLoader(train, batch_size, shuffle=True, seed=config.seed,
                            rank=rank, world_size=world_size, drop_last=True)
    for batch in loader:
        loss = model(values, offsets, timestamps, negatives)  # this rank's share of the batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also updates the item table (fused optimizer)
        optimizer.step()  # the dense parameters
    save_sharded(model, optimizer, "runs/x/step-1000")  # collective, a folder
    ...
    model = load_into_single_process("runs/x/step-1000", config, num_item_ids)  # serving

TorchRec fills the shards from the unsharded table, which ``shard_model``
first makes rank 0's on every rank (DDP does the same for the dense part), so
the sharded model starts exactly where rank 0's single-process model starts. ``model.module`` is the ``SequentialRecommender`` again (with a
sharded table): ``model.module.user_vectors(...)`` and ``item_vectors(...)``
work as before, but each call is a collective, so every rank must make it.

Optimizers. The dense parameters use ``torch.optim.Adam`` (as
``recsys.train``). The item table's optimizer is fused into FBGEMM's
backward kernel, which on CPU offers only SGD, Adagrad and row-wise Adagrad
(``Optimizer adam is not supported in CPU mode``, fbgemm-gpu-cpu 1.8), and
TorchRec's planner refuses a plain (``dense``) kernel for a sharded table.
So the table uses:

- CUDA: FBGEMM Adam, same lr/eps. It is "lazy" Adam: only rows looked up in
  a step move (their moments decay only when touched), and its weight decay
  is decoupled (``w -= lr * wd * w``, as AdamW) where ``torch.optim.Adam``
  adds ``wd * w`` to the gradient. Not checked here (no CUDA TorchRec).
- CPU: Adagrad (``torch.optim.Adagrad`` semantics, FBGEMM ``EXACT_ADAGRAD``),
  same lr, eps 1e-8: per-coordinate adaptive like Adam, with an identical
  first step (``lr * sign(g)``), but no momentum and a step size that
  shrinks as squared gradients accumulate. Row-lazy and dense Adagrad are
  the same algorithm (a zero gradient changes nothing), so
  ``single_process_optimizer`` reproduces a sharded CPU run exactly. It has
  no weight decay: ``shard_model`` refuses ``weight_decay > 0`` on CPU rather
  than silently ignore it.
- ``data_parallel`` (a replicated table) is refused on CPU: FBGEMM's CPU
  dense kernel pools each bag, and ``ItemEmbeddings.lookup`` sends all ids
  as one bag. Where it runs, TorchRec gives a replicated table no fused
  optimizer, so ``build_optimizer``'s Adam trains it with the dense part.

Gradient semantics (checked by tests/recsys/test_sharding.py). DDP averages
the dense gradients over ranks. The table's gradients are averaged too, not
summed: TorchRec's all-to-all backward divides by the world size
(``torchrec.distributed.comm_ops.GRADIENT_DIVISION``, on by default). So a
step on W ranks, each with its own batch b_r and mean loss L_r, is exactly a
single-process step on ``(L_1 + ... + L_W) / W``: a mean of per-rank means,
which weights every rank equally, not every token. The tests check it with
Adagrad's accumulated squared gradients, which (unlike Adam's or Adagrad's
updates) do change with the gradient's scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingEnv
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from .experiment import ExperimentConfig
from .models import ITEM_TABLE, SequentialRecommender
from .train import build_model

SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "data_parallel")

_COLLECTION = "item_embeddings.collection"  # the EmbeddingCollection inside SequentialRecommender
_EPS = 1e-8  # torch.optim.Adam's default; the table's optimizer uses it too


def embedding_optimizer(
    device_type: str, learning_rate: float, weight_decay: float = 0.0
) -> tuple[type[torch.optim.Optimizer], dict]:
    """The item table's optimizer class and arguments on this device (see the module notes)."""
    if device_type == "cuda":
        return torch.optim.Adam, {"lr": learning_rate, "eps": _EPS, "weight_decay": weight_decay}
    if weight_decay:
        raise ValueError(
            f"weight_decay={weight_decay}: the CPU-fused item-table optimizer (Adagrad) has no "
            "weight decay; train sharded on CPU with weight_decay 0, or on CUDA"
        )
    return torch.optim.Adagrad, {"lr": learning_rate, "eps": _EPS}


def _column_shard_dim(dim: int, world_size: int) -> int | None:
    """Narrowest column shard to let the planner consider: one slice per rank.

    TorchRec's default (128 columns) would keep any smaller table in one
    piece, so "column_wise" would quietly mean "table_wise". Column shards
    must be multiples of 4 that divide the dimension.
    """
    width = dim // world_size
    return width if width >= 4 and width % 4 == 0 and dim % width == 0 else None


def shard_model(
    model: SequentialRecommender,
    sharding_types: Sequence[str],
    *,
    learning_rate: float,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    process_group: dist.ProcessGroup | None = None,
) -> DistributedModelParallel:
    """Wrap ``model`` in DMP with its item table sharded; the result starts as rank 0's model.

    The planner chooses among ``sharding_types`` (``ShardingConfig.types``)
    for the item table; the dense part is replicated and trained with DDP.
    Collective: every rank of ``process_group`` (default: the world) calls it.
    ``model`` is consumed: DMP swaps its table for the sharded one.
    """
    unknown = sorted(set(sharding_types) - set(SHARDING_TYPES))
    if unknown or not sharding_types:
        raise ValueError(f"sharding types must be a non-empty subset of {SHARDING_TYPES}")
    device = torch.device(device)
    if device.type == "cpu" and "data_parallel" in sharding_types:
        # FBGEMM's CPU dense kernel (what data_parallel runs) pools each bag even
        # when asked not to, and ItemEmbeddings.lookup sends all ids as one bag.
        raise ValueError(
            "data_parallel does not work for the item table on CPU (fbgemm-gpu-cpu 1.8 "
            "returns one pooled row per bag); choose table_wise, column_wise or row_wise"
        )
    group = process_group if process_group is not None else dist.group.WORLD
    world_size = dist.get_world_size(group)

    # TorchRec fills the shards from the unsharded table it is given, so every
    # rank takes rank 0's first: the sharded model is then rank 0's model even
    # if ranks were seeded differently (DDP does the same for the dense part).
    table = model.item_embeddings.collection.embeddings[ITEM_TABLE].weight
    rank0_table = table.detach().to(device)
    dist.broadcast(rank0_table, src=dist.get_global_rank(group, 0), group=group)
    with torch.no_grad():
        table.copy_(rank0_table)

    # Marks the table's parameter; the sharder turns it into the fused optimizer.
    optimizer_class, optimizer_args = embedding_optimizer(device.type, learning_rate, weight_decay)
    apply_optimizer_in_backward(
        optimizer_class, model.item_embeddings.collection.parameters(), optimizer_args
    )

    constraints = {
        ITEM_TABLE: ParameterConstraints(
            sharding_types=list(sharding_types),
            min_partition=_column_shard_dim(model.item_embeddings.dim, world_size),
        )
    }
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world_size), kernel_config=KernelConfig(compute_device=device.type)
    )
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    sharders = [EmbeddingCollectionSharder()]
    plan = planner.collective_plan(model, sharders, group)
    return DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(group),
        device=device,
        plan=plan,
        sharders=sharders,
    )


def build_optimizer(
    sharded: DistributedModelParallel, learning_rate: float, weight_decay: float = 0.0
) -> CombinedOptimizer:
    """Adam for the dense parameters, plus the table's fused optimizer (applied in backward).

    ``step()`` updates the dense part; the table has already been updated
    during ``backward()``. ``state_dict()`` holds both, keyed by parameter name.
    """
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(sharded.named_parameters())),
        lambda params: torch.optim.Adam(
            params, lr=learning_rate, eps=_EPS, weight_decay=weight_decay
        ),
    )
    return CombinedOptimizer([sharded.fused_optimizer, dense])


def single_process_optimizer(
    model: SequentialRecommender,
    learning_rate: float,
    weight_decay: float = 0.0,
    device_type: str = "cpu",
) -> CombinedOptimizer:
    """The unsharded counterpart of ``build_optimizer``: the same update rules, one process.

    Exact on CPU (Adagrad on the table). On CUDA it applies dense Adam to the
    table, where the sharded run's FBGEMM Adam is row-lazy: close, not equal.
    """
    named = dict(model.named_parameters())
    table = {name: p for name, p in named.items() if name.startswith(f"{_COLLECTION}.")}
    dense = {name: p for name, p in named.items() if name not in table}
    table_class, table_args = embedding_optimizer(device_type, learning_rate, weight_decay)
    return CombinedOptimizer(
        [
            KeyedOptimizerWrapper(table, lambda params: table_class(params, **table_args)),
            KeyedOptimizerWrapper(
                dense,
                lambda params: torch.optim.Adam(
                    params, lr=learning_rate, eps=_EPS, weight_decay=weight_decay
                ),
            ),
        ]
    )


# ---------------------------------------------------------------------- checkpoints


def save_sharded(
    sharded: DistributedModelParallel,
    optimizer: CombinedOptimizer,
    path: str | Path,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Write model and optimizer state to the folder ``path`` (torch.distributed.checkpoint).

    Collective over the group the model was sharded on. Each rank writes only
    its own shards, and replicated tensors are written once.
    """
    state = {"model": sharded.state_dict(), "optimizer": optimizer.state_dict()}
    dcp.save(state, checkpoint_id=str(path), process_group=process_group)


def load_sharded(
    sharded: DistributedModelParallel,
    optimizer: CombinedOptimizer,
    path: str | Path,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Load a ``save_sharded`` folder into a sharded model and its ``build_optimizer``.

    Collective. The plan may differ from the one that saved it (DCP reshards).
    """
    # KeyedOptimizer loads only into existing state, and Adam creates its state
    # at the first step: take a zero-gradient step first (all of it is overwritten).
    for _, part in optimizer.optimizers:
        if not part.state:
            part.init_state()
    state = {"model": sharded.state_dict(), "optimizer": optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(path), process_group=process_group)
    sharded.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def load_into_single_process(
    path: str | Path, config: ExperimentConfig, num_item_ids: int
) -> SequentialRecommender:
    """The model of a ``save_sharded`` folder, whole, in this process (no process group needed).

    DCP reassembles the item table from the shards every rank wrote; the
    optimizer state is not read.
    """
    model = build_model(config, num_item_ids)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(state["model"])
    return model
