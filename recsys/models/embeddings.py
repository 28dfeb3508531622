"""The item table: one TorchRec ``EmbeddingCollection`` table, shardable by DMP.

Everything that needs item vectors (sequence inputs, next-item targets,
sampled negatives, the full catalogue for ranking) goes through ``lookup``,
so the same model code runs unsharded in a notebook and sharded
(table-, column- or row-wise) under ``DistributedModelParallel``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ..data.batches import ITEM_FEATURE  # one key for batches and the table

ITEM_TABLE = "item_table"  # never name a table after a module attribute (TorchRec rejects it)


class ItemEmbeddings(nn.Module):
    def __init__(self, num_item_ids: int, dim: int, init_std: float = 0.02):
        super().__init__()
        self.num_item_ids = num_item_ids
        self.dim = dim
        # Truncated normal (std 0.02) as the HSTU / SASRec reference code initialises items.
        init = partial(
            nn.init.trunc_normal_, mean=0.0, std=init_std, a=-2 * init_std, b=2 * init_std
        )
        self.collection = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=ITEM_TABLE,
                    embedding_dim=dim,
                    num_embeddings=num_item_ids,
                    feature_names=[ITEM_FEATURE],
                    init_fn=init,
                )
            ]
        )

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(n,) int64 ids -> (n, dim) vectors. One collective call when sharded."""
        features = KeyedJaggedTensor(
            keys=[ITEM_FEATURE],
            values=ids.reshape(-1),
            lengths=torch.tensor([ids.numel()], dtype=torch.int32, device=ids.device),
        )
        return self.collection(features)[ITEM_FEATURE].values()
