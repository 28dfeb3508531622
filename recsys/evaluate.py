"""Evaluate a scorer on a split with full ranking (see ``recsys.metrics``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .data.batches import SequenceBatch, SequenceLoader
from .data.splits import SequenceExamples
from .metrics import DEFAULT_KS, ranking_metrics, target_ranks

Scorer = Callable[[SequenceBatch], torch.Tensor]  # batch -> (B, num_item_ids) scores


@torch.no_grad()
def collect_ranks(
    scorer: Scorer,
    examples: SequenceExamples,
    *,
    batch_size: int = 1024,
    exclude_history: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """0-based target ranks for this rank's share of ``examples``."""
    loader = SequenceLoader(examples, batch_size, rank=rank, world_size=world_size)
    ranks = []
    for batch in tqdm(loader, desc="ranking", disable=not progress, leave=False):
        scores = scorer(batch)
        history = batch.history if exclude_history else None
        ranks.append(
            target_ranks(
                scores,
                batch.targets.to(scores.device),
                None if history is None else history.values().to(scores.device),
                None if history is None else history.offsets().to(scores.device),
            ).cpu()
        )
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def evaluate(
    scorer: Scorer, examples: SequenceExamples, ks=DEFAULT_KS, **kwargs
) -> dict[str, float]:
    ranks = collect_ranks(scorer, examples, **kwargs)
    return {**ranking_metrics(ranks, ks), "num_users": int(ranks.numel())}
