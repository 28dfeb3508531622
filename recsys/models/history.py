"""The encoded history that target-aware candidates attend to (M-FALCON style scoring).

A candidate is scored as one more token after a user's history: it attends to every
history token and to itself, never to another candidate. Attention is causal, so the
history's activations do not depend on the candidate (given the same normaliser) and
are computed once; each block keeps its keys and values here, and any number of
candidates is then scored against them in micro-batches (``attend_candidates`` of the
encoders). Batched over users (padded, with ``lengths``) for the training loss; one
user for serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HistoryCache:
    keys: list[torch.Tensor]  # per block: (B, W, heads, key_dim), padded after each length
    values: list[torch.Tensor]  # per block: (B, W, heads, value_dim)
    lengths: torch.Tensor  # (B,) history lengths; the candidates sit at this position
    timestamps: torch.Tensor | None = None  # (B, W) padded, None without times
    # HSTU: the divisor n of the (L + 1)-long sequences the candidates complete; SASRec: None.
    normalizer: torch.Tensor | None = None

    @property
    def visible(self) -> torch.Tensor:
        """(B, W): True on real history tokens, False on padding."""
        width = self.keys[0].shape[1] if self.keys else 0
        columns = torch.arange(width, device=self.lengths.device)
        return columns[None, :] < self.lengths[:, None]
