"""Next-item losses on L2-normalised vectors with a temperature.

``sampled_softmax``: each position's positive (the next item) against N
uniformly sampled negatives; a negative equal to the positive is masked out.
Negatives are drawn outside the model (``NegativeSampler``) so that a run is
reproducible from its seed and identical sharded or not.

``in_batch_softmax``: the other positives of the batch are the negatives;
with ``logq_correction`` each logit is reduced by log(sampling probability of
that item), which undoes the popularity bias of in-batch sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASKED = -5e4  # large negative, safe in fp16/bf16 too


class NegativeSampler:
    """Uniform negatives over the item ids that occur in the data."""

    def __init__(self, item_ids: torch.Tensor, seed: int):
        self.item_ids = item_ids
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, shape: tuple[int, ...]) -> torch.Tensor:
        picks = torch.randint(0, self.item_ids.numel(), shape, generator=self.generator)
        return self.item_ids[picks]


def sampled_softmax_loss(
    states: torch.Tensor,
    positives: torch.Tensor,
    positive_ids: torch.Tensor,
    negatives: torch.Tensor,
    negative_ids: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """states, positives: (P, d); negatives: (P, N, d) per position or (N, d) shared."""
    positive_logits = (states * positives).sum(-1, keepdim=True)
    if negatives.dim() == 2:  # one set of negatives for the whole batch
        negative_logits = states @ negatives.T
        clash = positive_ids[:, None] == negative_ids[None, :]
    else:
        negative_logits = torch.einsum("pd,pnd->pn", states, negatives)
        clash = positive_ids[:, None] == negative_ids
    negative_logits = negative_logits.masked_fill(clash, _MASKED * temperature)
    logits = torch.cat([positive_logits, negative_logits], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def in_batch_softmax_loss(
    states: torch.Tensor,
    positives: torch.Tensor,
    positive_ids: torch.Tensor,
    temperature: float,
    log_item_probability: torch.Tensor | None = None,
) -> torch.Tensor:
    logits = states @ positives.T / temperature
    if log_item_probability is not None:
        logits = logits - log_item_probability[positive_ids][None, :]
    # Another position with the same positive item is not a negative.
    same_item = positive_ids[:, None] == positive_ids[None, :]
    same_item.fill_diagonal_(False)
    logits = logits.masked_fill(same_item, _MASKED)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
