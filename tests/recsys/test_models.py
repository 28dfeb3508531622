"""Model-level properties: batching never mixes sequences, causality, losses, weights round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys.experiment import ModelConfig
from recsys.losses import NegativeSampler, sampled_softmax_loss
from recsys.models import SequentialRecommender

NUM_IDS = 60


def _model(family, seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(
        family=family, embedding_dim=16, num_blocks=2, num_heads=2, dropout=0.0, **overrides
    )
    return SequentialRecommender(config, NUM_IDS, max_seq_len=12).eval()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(1, NUM_IDS, (sum(lengths),), generator=g)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    times = torch.sort(torch.randint(0, 10**6, (sum(lengths),), generator=g)).values
    return values, offsets, times


def _states(model, values, offsets, times):
    return model.encode(model.item_embeddings.lookup(values), offsets, times)


@pytest.mark.parametrize("family", ["hstu", "sasrec"])
def test_each_sequence_is_encoded_alone(family):
    """A jagged batch gives each sequence exactly what it gets on its own (no leakage between rows)."""
    model = _model(family)
    lengths = [5, 1, 12, 7]
    values, offsets, times = _batch(lengths)
    together = _states(model, values, offsets, times)
    for row in range(len(lengths)):
        start, stop = offsets[row].item(), offsets[row + 1].item()
        alone = _states(
            model, values[start:stop], torch.tensor([0, stop - start]), times[start:stop]
        )
        torch.testing.assert_close(together[start:stop], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["hstu", "sasrec"])
def test_causal(family):
    """Changing a later item (or its time) never changes an earlier state."""
    model = _model(family)
    values, offsets, times = _batch([10])
    before = _states(model, values, offsets, times)
    changed_values, changed_times = values.clone(), times.clone()
    changed_values[6] = (values[6] % (NUM_IDS - 1)) + 1
    changed_times[6:] += 10**5
    after = _states(model, changed_values, offsets, changed_times)
    torch.testing.assert_close(before[:6], after[:6], rtol=0, atol=0)
    assert not torch.allclose(before[6:], after[6:])


def test_hstu_uses_time_and_position_bias():
    values, offsets, times = _batch([9])
    full = _model("hstu")
    no_time = _model("hstu", time_bias=False)
    assert not torch.allclose(
        _states(full, values, offsets, times), _states(full, values, offsets, times * 50)
    )
    torch.testing.assert_close(
        _states(no_time, values, offsets, times), _states(no_time, values, offsets, times * 50)
    )


def test_states_are_unit_vectors_and_user_vector_is_last_state():
    model = _model("hstu")
    values, offsets, times = _batch([4, 6])
    states = _states(model, values, offsets, times)
    torch.testing.assert_close(states.norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(model.user_vectors(values, offsets, times), states[[3, 9]])


def test_sampled_softmax_masks_negatives_equal_to_positive():
    states = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    positives = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    positive_ids = torch.tensor([4, 5, 6])
    negative_ids = torch.tensor([[4, 7], [1, 2], [3, 6]])
    negatives = torch.randn(3, 2, 8)
    loss = sampled_softmax_loss(states, positives, positive_ids, negatives, negative_ids, 0.1)
    logits = (
        torch.cat(
            [
                (states * positives).sum(-1, keepdim=True),
                torch.einsum("pd,pnd->pn", states, negatives),
            ],
            1,
        )
        / 0.1
    )
    logits[0, 1] = -1e9
    logits[2, 2] = -1e9
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    )


@pytest.mark.parametrize("family", ["hstu", "sasrec"])
@pytest.mark.parametrize("shared", [False, True])
def test_training_step_reduces_loss_and_weights_round_trip(family, shared, tmp_path):
    model = _model(family).train()
    values, offsets, times = _batch([8, 3, 12, 5])
    sampler = NegativeSampler(torch.arange(1, NUM_IDS), seed=0)
    predicting = values.numel() - 4
    negatives = sampler.sample((20,) if shared else (predicting, 20))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(values, offsets, times, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors"
    )
    fresh = _model(family, seed=1)
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"))
    model.eval()
    torch.testing.assert_close(
        fresh.user_vectors(values, offsets, times), model.user_vectors(values, offsets, times)
    )


def test_in_batch_loss_trains():
    model = _model("hstu").train()
    values, offsets, times = _batch([8, 9, 12, 5])
    log_q = torch.log(torch.full((NUM_IDS,), 1.0 / NUM_IDS))
    loss = model(values, offsets, times, None, log_q)
    assert torch.isfinite(loss) and loss.requires_grad
