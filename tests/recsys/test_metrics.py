"""Full-ranking metrics on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.metrics import ranking_metrics, target_ranks


def test_ranks_exclusion_and_ties():
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.9, 0.3],  # column 0 is padding: never ranked
            [0.0, 0.4, 0.4, 0.4, 0.1],  # ties count against the target
            [0.0, 0.9, 0.8, 0.1, 0.2],
        ]
    )
    targets = torch.tensor([2, 2, 3])
    assert target_ranks(scores, targets).tolist() == [1, 2, 3]
    # Excluding history item 3 for user 0 lifts target 2 to the top; user 2's
    # target is in its own history: excluded, so it is a miss (ranked last).
    history_values = torch.tensor([3, 1, 3])
    history_offsets = torch.tensor([0, 1, 1, 3])
    ranks = target_ranks(scores, targets, history_values, history_offsets)
    assert ranks.tolist() == [0, 2, 5]


def test_metric_values():
    metrics = ranking_metrics(torch.tensor([0, 1, 9, 10, 60]), ks=(10, 50))
    assert metrics["hr@10"] == pytest.approx(3 / 5)
    assert metrics["hr@50"] == pytest.approx(4 / 5)
    expected_ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert metrics["ndcg@10"] == pytest.approx(expected_ndcg10)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 61) / 5)


def test_constant_scores_are_not_rewarded():
    scores = torch.ones(4, 100)
    ranks = target_ranks(scores, torch.tensor([1, 5, 50, 99]))
    assert (ranks == 98).all()  # every other real item ties, and ties go against the target
