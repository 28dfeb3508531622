"""Full-ranking next-item metrics: every item in the catalogue is a candidate.

Protocol (the one the S3-Rec / BSARec / HSTU tables use): score all items,
optionally remove the items already in the user's history (``exclude_history``;
if the target itself is in the history it is removed too and counts as a miss,
as in those codebases), and find the target's rank. Ties are broken against
the target (an item scoring exactly the same is counted as ranked above it),
so a constant scorer cannot look good.
"""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (10, 50, 200)


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    history_values: torch.Tensor | None = None,
    history_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """0-based rank of each target among all items (column 0 is padding, never ranked).

    ``scores``: (B, num_item_ids); ``targets``: (B,); history as jagged
    (values, offsets) of item ids to exclude, or None to keep every item.
    """
    scores = scores.float().clone()
    scores[:, 0] = -math.inf
    if history_values is not None:
        rows = torch.repeat_interleave(
            torch.arange(scores.shape[0], device=scores.device), history_offsets.diff()
        )
        scores[rows, history_values] = -math.inf
    target_scores = scores.gather(1, targets[:, None])
    # Items scoring higher, plus ties (minus the target itself): one pass over the scores.
    ranks = torch.count_nonzero(scores >= target_scores, dim=1) - 1
    # An excluded target (score -inf) is a miss: rank it last.
    return torch.where(torch.isinf(target_scores[:, 0]), scores.shape[1], ranks)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item) and MRR from 0-based ranks."""
    ranks = ranks.double()
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = hit.double().mean().item()
        metrics[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
    metrics["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    return metrics
