"""A next-item recommender: item table -> sequence encoder -> L2-normalised states.

The encoder is HSTU or SASRec; everything around it (item embeddings in a
TorchRec table, learned positions, dropout, normalisation, loss) is shared,
so the two are compared like for like. Works on jagged batches throughout:
``values`` (total,) item ids and ``offsets`` (B + 1,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import in_batch_softmax_loss, sampled_softmax_loss
from .embeddings import ItemEmbeddings
from .hstu import HSTUEncoder
from .sasrec import SASRecEncoder

ENCODERS = {"hstu": HSTUEncoder, "sasrec": SASRecEncoder}


def _positions(offsets: torch.Tensor) -> torch.Tensor:
    """0-based position of every jagged element within its own sequence."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    return torch.arange(int(offsets[-1]), device=offsets.device) - offsets[rows]


def _drop_last(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of every element but each sequence's last, and the new offsets."""
    lengths = (offsets[1:] - offsets[:-1]).clamp(min=1) - 1
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(lengths, 0)
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    keep = (
        offsets[rows]
        + torch.arange(int(new_offsets[-1]), device=offsets.device)
        - new_offsets[rows]
    )
    return keep, new_offsets


class SequentialRecommender(nn.Module):
    def __init__(self, config, num_item_ids: int, max_seq_len: int, temperature: float = 0.05):
        super().__init__()
        self.config = config
        self.temperature = temperature
        self.max_seq_len = max_seq_len
        dim = config.embedding_dim
        self.item_embeddings = ItemEmbeddings(num_item_ids, dim)
        self.position_embeddings = nn.Embedding(max_seq_len, dim)
        nn.init.trunc_normal_(self.position_embeddings.weight, std=math.sqrt(1.0 / dim))
        self.encoder = ENCODERS[config.family](config, max_seq_len)

    # ------------------------------------------------------------------ encoding

    def encode(
        self, embedded: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw item vectors (total, d) of the input sequences -> normalised states (total, d)."""
        positions = _positions(offsets).clamp(max=self.max_seq_len - 1)
        x = embedded * math.sqrt(embedded.shape[-1]) + self.position_embeddings(positions)
        x = F.dropout(x, self.config.dropout, self.training)
        return F.normalize(self.encoder(x, offsets, timestamps), dim=-1, eps=1e-6)

    def user_vectors(
        self, item_ids: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, d): the state after each sequence's last item (what predicts the next one)."""
        states = self.encode(self.item_embeddings.lookup(item_ids), offsets, timestamps)
        return states[offsets[1:] - 1]

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_embeddings.lookup(ids), dim=-1, eps=1e-6)

    # ------------------------------------------------------------------ training

    def forward(
        self,
        item_ids: torch.Tensor,
        offsets: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        negative_ids: torch.Tensor | None = None,
        log_item_probability: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Autoregressive loss: every position predicts the next item of its sequence.

        ``negative_ids``: (P, N) per predicting position, or (N,) shared by the
        batch, for the sampled softmax; None selects the in-batch softmax.
        """
        num_items = item_ids.numel()
        # One lookup for inputs and negatives: one collective round when sharded.
        lookup_ids = (
            item_ids if negative_ids is None else torch.cat([item_ids, negative_ids.reshape(-1)])
        )
        embedded = self.item_embeddings.lookup(lookup_ids)
        sequence_vectors = embedded[:num_items]

        inputs, input_offsets = _drop_last(offsets)
        targets = inputs + 1  # the next element of the same sequence
        states = self.encode(
            sequence_vectors[inputs],
            input_offsets,
            None if timestamps is None else timestamps[inputs],
        )
        positives = F.normalize(sequence_vectors[targets], dim=-1, eps=1e-6)
        positive_ids = item_ids[targets]
        temperature = self.temperature
        if negative_ids is None:
            return in_batch_softmax_loss(
                states, positives, positive_ids, temperature, log_item_probability
            )
        negatives = F.normalize(embedded[num_items:], dim=-1, eps=1e-6)
        negatives = negatives.view(*negative_ids.shape, -1)
        return sampled_softmax_loss(
            states, positives, positive_ids, negatives, negative_ids, temperature
        )
