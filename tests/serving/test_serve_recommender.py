"""serving.recommender without Ray: what the endpoints compute, against the model itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from recsys.config import to_dict
from recsys.experiment import DataConfig, ExperimentConfig, ModelConfig
from recsys.train import build_model
from serving.loading import load_bundle
from serving.recommender import InvalidRequest, Query, Recommender

NUM_ITEM_IDS = 40
MAX_LEN = 8


def _run_folder(tmp_path, family: str, ranking_head: bool = True):
    """A run folder as `python -m recsys.train` leaves it (random weights suffice here)."""
    experiment = ExperimentConfig(
        data=DataConfig(max_len=MAX_LEN),
        model=ModelConfig(
            family=family, embedding_dim=8, num_blocks=2, dropout=0.0, ranking_head=ranking_head
        ),
    )
    model = build_model(experiment, NUM_ITEM_IDS)
    folder = tmp_path / f"{family}-{ranking_head}"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(experiment)))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    np.save(folder / "candidates.npy", np.arange(1, NUM_ITEM_IDS - 3))  # 37..39 never recommended
    return folder


@pytest.fixture(params=["hstu", "sasrec"])
def recommender(request, tmp_path):
    return Recommender(load_bundle(str(_run_folder(tmp_path, request.param))))


def test_recommend_is_the_full_ranking_of_the_model(recommender):
    history = list(range(1, 20))  # longer than max_len: the model reads the last 8
    [(items, scores)] = recommender.recommend([Query(history, k=5, exclude_history=False)])
    with torch.no_grad():
        model = recommender.model
        user = model.user_vectors(torch.tensor(history[-MAX_LEN:]), torch.tensor([0, MAX_LEN]))
        logits = (user @ model.item_vectors(torch.arange(NUM_ITEM_IDS)).T)[0]
    logits[0] = logits[NUM_ITEM_IDS - 3 :] = -math.inf
    expected = torch.topk(logits, 5)
    assert items == expected.indices.tolist()
    assert scores == pytest.approx(expected.values.tolist(), abs=1e-6)


def test_exclusion_blocked_items_and_short_answers(recommender):
    history = list(range(1, 30))
    [(items, _)] = recommender.recommend([Query(history, k=100)])
    assert sorted(items) == list(range(30, NUM_ITEM_IDS - 3))  # all that is left, no more
    [(items, _)] = recommender.recommend([Query([1], k=100, exclude_history=False)])
    assert len(items) == NUM_ITEM_IDS - 4 and 0 not in items


def test_a_bad_query_does_not_spoil_its_batch(recommender):
    good = Query([3, 4, 5], k=3)
    results = recommender.recommend([good, Query([3, NUM_ITEM_IDS]), good])
    assert isinstance(results[1], InvalidRequest) and f"{NUM_ITEM_IDS}" in str(results[1])
    [(alone_items, alone_scores)] = recommender.recommend([good])
    for items, scores in (results[0], results[2]):
        assert items == alone_items
        assert scores == pytest.approx(alone_scores, abs=1e-6)  # batch size changes the rounding


def test_rank_is_target_aware_and_equals_the_naive_computation(recommender):
    history, candidates = list(range(1, 15)), [5, 30, 2, 39, 5]
    scores, method = recommender.rank(history, candidates)
    assert method == "target_aware"
    recent = torch.tensor(history[-(MAX_LEN - 1) :])  # one slot left for the candidate
    naive = recommender.model.score_candidates_naive(recent, torch.tensor(candidates))
    assert scores == pytest.approx(naive.tolist(), abs=1e-5)
    with pytest.raises(InvalidRequest, match="candidates has 1 unknown"):
        recommender.rank(history, [1, 0])


def test_rank_without_a_ranking_head_uses_the_retrieval_score(tmp_path):
    recommender = Recommender(load_bundle(str(_run_folder(tmp_path, "hstu", ranking_head=False))))
    scores, method = recommender.rank([1, 2, 3], [4, 5])
    assert method == "retrieval"
    [(items, top)] = recommender.recommend([Query([1, 2, 3], k=NUM_ITEM_IDS)])
    by_item = dict(zip(items, top, strict=True))
    assert scores == pytest.approx([by_item[4], by_item[5]], abs=1e-6)
