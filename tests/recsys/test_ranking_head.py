"""Target-aware ranking head: cached (M-FALCON style) scoring equals the naive path, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from recsys.config import ConfigError, load_config
from recsys.experiment import ExperimentConfig, ModelConfig
from recsys.losses import NegativeSampler
from recsys.models import SequentialRecommender

NUM_IDS = 60
MAX_LEN = 12

# (family, overrides, with timestamps): both normalisers, time bias on/off, with/without times.
VARIANTS = {
    "hstu-maxlen-time": ("hstu", {}, True),
    "hstu-length-time": ("hstu", {"hstu_normalizer": "length"}, True),
    "hstu-maxlen-no-times": ("hstu", {}, False),
    "hstu-length-no-time-bias": ("hstu", {"hstu_normalizer": "length", "time_bias": False}, True),
    "sasrec": ("sasrec", {}, True),
    "sasrec-no-times": ("sasrec", {}, False),
}


def _model(family, seed=0, ranking_head=True, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(
        family=family,
        embedding_dim=16,
        num_blocks=2,
        num_heads=2,
        dropout=0.0,
        ranking_head=ranking_head,
        **overrides,
    )
    return SequentialRecommender(config, NUM_IDS, max_seq_len=MAX_LEN).eval()


def _history(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_IDS, (length,), generator=g)
    times = torch.sort(torch.randint(0, 10**6, (length,), generator=g)).values
    return items, times


def _candidates(history, count=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    candidates = torch.randint(1, NUM_IDS, (count,), generator=g)
    candidates[0], candidates[1] = history[-1], history[0]  # candidates already in the history
    return candidates


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [1, 5, MAX_LEN - 1])
@pytest.mark.parametrize("candidate_timestamp", [None, 2 * 10**6])
def test_cached_scores_equal_naive(variant, length, candidate_timestamp):
    family, overrides, with_times = VARIANTS[variant]
    model = _model(family, **overrides).double()
    items, times = _history(length, seed=length)
    times = times if with_times else None
    candidate_timestamp = candidate_timestamp if with_times else None
    candidates = _candidates(items)
    naive = model.score_candidates_naive(items, candidates, times, candidate_timestamp)
    cache = model.history_cache(items, times)
    for micro_batch in (1, 7, candidates.numel()):
        cached = model.score_candidates(cache, candidates, candidate_timestamp, micro_batch)
        assert cached.shape == (candidates.numel(),) and cached.dtype == torch.float64
        torch.testing.assert_close(cached, naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["hstu-length-time", "sasrec"])
def test_cached_scores_equal_naive_in_float32(variant):
    family, overrides, _ = VARIANTS[variant]
    model = _model(family, **overrides)
    items, times = _history(MAX_LEN - 1)
    candidates = _candidates(items)
    naive = model.score_candidates_naive(items, candidates, times)
    cached = model.score_candidates(model.history_cache(items, times), candidates, micro_batch=8)
    torch.testing.assert_close(cached, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["hstu-length-time", "sasrec"])
def test_candidates_never_influence_each_other(variant):
    family, overrides, _ = VARIANTS[variant]
    model = _model(family, **overrides).double()
    items, times = _history(8)
    candidates = _candidates(items)
    cache = model.history_cache(items, times)
    everything = model.score_candidates(cache, candidates, micro_batch=64)
    subset = torch.tensor([3, 0, 17, 9])
    torch.testing.assert_close(
        model.score_candidates(cache, candidates[subset], micro_batch=64), everything[subset]
    )
    torch.testing.assert_close(
        model.score_candidates(cache, candidates.flip(0), micro_batch=3), everything.flip(0)
    )


def test_candidate_time_uses_the_time_bias_only_when_the_model_has_one():
    items, times = _history(6)
    candidates = _candidates(items)
    for time_bias, changes in ((True, True), (False, False)):
        model = _model("hstu", time_bias=time_bias).double()
        cache = model.history_cache(items, times)
        soon = model.score_candidates(cache, candidates, candidate_timestamp=int(times[-1]) + 10)
        later = model.score_candidates(
            cache, candidates, candidate_timestamp=int(times[-1]) + 10**7
        )
        assert changes != torch.allclose(soon, later)


def test_scores_depend_on_the_history():
    model = _model("hstu").double()
    candidates = _candidates(_history(6)[0])
    first, second = (
        model.score_candidates(model.history_cache(_history(6, s)[0]), candidates) for s in (1, 2)
    )
    assert not torch.allclose(first, second)


def test_models_without_a_head_raise_a_clear_error():
    model = _model("hstu", ranking_head=False)
    items, _ = _history(4)
    assert not model.has_ranking_head and model.ranking_head is None
    assert _model("hstu").has_ranking_head
    with pytest.raises(RuntimeError, match=r"model\.ranking_head=true"):
        model.history_cache(items)
    with pytest.raises(RuntimeError, match=r"model\.ranking_head=true"):
        model.score_candidates_naive(items, items)
    cache = _model("hstu").history_cache(items)
    with pytest.raises(RuntimeError, match=r"model\.ranking_head=true"):
        model.score_candidates(cache, items)


def test_bad_inputs_are_rejected():
    model = _model("hstu")
    with pytest.raises(ValueError, match="1 to max_seq_len - 1"):
        model.history_cache(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="1 to max_seq_len - 1"):
        model.history_cache(torch.arange(1, MAX_LEN + 1))
    items, times = _history(4)
    with pytest.raises(ValueError, match="timestamps must match"):
        model.history_cache(items, times[:2])
    with pytest.raises(ValueError, match="candidate_timestamp needs"):
        model.score_candidates(model.history_cache(items), items, candidate_timestamp=5)
    with pytest.raises(ValueError, match="micro_batch"):
        model.score_candidates(model.history_cache(items), items, micro_batch=0)
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        model.train().history_cache(items)


def test_the_head_only_adds_parameters():
    """Off, the model is the one it always was (same init, state dicts without the head load)."""
    without, with_head = _model("hstu", ranking_head=False), _model("hstu")
    extra = set(with_head.state_dict()) - set(without.state_dict())
    assert extra and all(key.startswith("ranking_head.") for key in extra)
    for key, value in without.state_dict().items():
        torch.testing.assert_close(with_head.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["hstu", "sasrec"])
def test_state_dict_round_trip(family, tmp_path):
    model = _model(family)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.st")
    fresh = _model(family, seed=1)
    fresh.load_state_dict(load_file(tmp_path / "m.st"))
    items, times = _history(7)
    candidates = _candidates(items)
    torch.testing.assert_close(
        fresh.score_candidates(fresh.history_cache(items, times), candidates),
        model.score_candidates(model.history_cache(items, times), candidates),
    )


# ---------------------------------------------------------------------------- training


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(1, NUM_IDS, (sum(lengths),), generator=g)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    times = torch.sort(torch.randint(0, 10**6, (sum(lengths),), generator=g)).values
    return values, offsets, times


def _negatives(mode, offsets, count=10, seed=0):
    predicting = int(offsets[-1]) - (offsets.numel() - 1)
    sampler = NegativeSampler(torch.arange(1, NUM_IDS), seed=seed)
    if mode == "in_batch":
        return None
    return sampler.sample((count,) if mode == "shared" else (predicting, count))


@pytest.mark.parametrize("variant", ["hstu-maxlen-time", "hstu-length-time", "sasrec"])
@pytest.mark.parametrize("mode", ["shared", "per_position", "in_batch"])
def test_training_ranking_loss_is_the_naive_listwise_loss(variant, mode):
    """forward's ranking term equals cross-entropy over naive scores of [last item] + negatives."""
    family, overrides, _ = VARIANTS[variant]
    model = _model(family, ranking_negatives=4, **overrides)  # fp32: the item table stays fp32
    lengths = [5, 1, MAX_LEN, 3]  # a one-item sequence has no history: left out
    values, offsets, times = _batch(lengths)
    last = (offsets[1:] - 1).tolist()
    negatives = _negatives(mode, offsets)
    # One negative of the first sequence equals its positive: it must be masked out.
    if mode == "shared":
        negatives[1] = values[last[0]]
    elif mode == "per_position":
        negatives[lengths[0] - 2, 1] = values[last[0]]
    else:
        values[last[2]] = values[last[0]]
    with_head = model(values, offsets, times, negatives)
    head, model.ranking_head = model.ranking_head, None
    next_item_only = model(values, offsets, times, negatives)
    model.ranking_head = head

    expected, clashes = [], 0
    for row, length in enumerate(lengths):
        if length == 1:
            continue
        start, stop = int(offsets[row]), int(offsets[row + 1])
        if mode == "shared":
            sampled = negatives[:4]
        elif mode == "per_position":
            sampled = negatives[stop - (row + 1) - 1, :4]  # the sequence's last predicting row
        else:  # the next sequences' last items
            sampled = values[[last[(row + k) % len(lengths)] for k in (1, 2, 3)]]
        candidates = torch.cat([values[stop - 1 : stop], sampled])
        scores = model.score_candidates_naive(
            values[start : stop - 1], candidates, times[start : stop - 1], int(times[stop - 1])
        )
        clash = candidates == candidates[0]
        clash[0] = False
        clashes += int(clash.any())
        scores = scores.masked_fill(clash, -torch.inf)
        expected.append(-F.log_softmax(scores, 0)[0])
    assert clashes >= 1
    torch.testing.assert_close(
        with_head - next_item_only, torch.stack(expected).mean(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("family", ["hstu", "sasrec"])
@pytest.mark.parametrize("mode", ["shared", "per_position", "in_batch"])
def test_training_with_the_head_reduces_the_loss(family, mode):
    torch.manual_seed(0)
    config = ModelConfig(
        family=family,
        embedding_dim=16,
        num_heads=2,
        dropout=0.1,
        ranking_head=True,
        ranking_negatives=8,
    )
    model = SequentialRecommender(config, NUM_IDS, max_seq_len=MAX_LEN).train()
    values, offsets, times = _batch([8, 3, 12, 1, 5])
    negatives = _negatives(mode, offsets, count=20)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(values, offsets, times, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.ranking_head.parameters())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.ranking_weight=0", r"model\.ranking_weight: must be > 0, got 0"),
        ("model.ranking_negatives=0", r"model\.ranking_negatives: must be >= 1, got 0"),
        ("model.ranking_head=maybe", r"model\.ranking_head: expected true or false"),
    ],
)
def test_bad_ranking_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, [override])
