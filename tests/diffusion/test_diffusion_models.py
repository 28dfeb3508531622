"""DiT, Switch-DiT and MoE-DiT: shapes, initialisation, conditioning, routing, losses, I/O."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion.models import (
    MODEL_NAMES,
    DiffusionTransformerOutput,
    DiT,
    MoEDiT,
    SwitchDiT,
    build_model,
    load_pretrained,
)
from diffusion.models.moe_dit import (
    TokenRoutedMoE,
    load_balancing_loss,
    routing_fractions,
    within_capacity,
)
from diffusion.models.switch_dit import (
    diffusion_prior_loss,
    diffusion_prior_mask,
    jensen_shannon,
)

# Small enough for the whole file to run in seconds on 2 cores.
TINY = dict(sample_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2)
NUM_CLASSES = 5
FAMILIES = {
    "DiT": lambda **kw: DiT(**{**TINY, "num_classes": NUM_CLASSES, **kw}),
    "SwitchDiT": lambda **kw: SwitchDiT(
        **{**TINY, "num_classes": NUM_CLASSES, "num_train_timesteps": 100, **kw}
    ),
    "MoEDiT": lambda **kw: MoEDiT(**{**TINY, "num_classes": NUM_CLASSES, "num_experts": 4, **kw}),
}


def make_batch(batch: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, TINY["in_channels"], 8, 8, generator=generator)
    t = torch.randint(0, 100, (batch,), generator=generator)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    return x, t, y


def randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: zero-initialised layers would hide most bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_output_shapes_and_fields(family, learn_sigma):
    torch.manual_seed(0)
    model = FAMILIES[family](learn_sigma=learn_sigma).eval()
    x, t, y = make_batch()
    out = model(x, t, y)
    assert isinstance(out, DiffusionTransformerOutput)
    channels = 2 * TINY["in_channels"] if learn_sigma else TINY["in_channels"]
    assert out.sample.shape == (4, channels, 8, 8)
    assert out.aux_loss.shape == ()
    if family == "DiT":
        assert out.expert_load is None and float(out.aux_loss) == 0.0
    else:
        experts = model.config.num_experts
        assert out.expert_load.shape == (TINY["depth"], experts)
        assert not out.expert_load.requires_grad
        torch.testing.assert_close(out.expert_load.sum(1), torch.ones(TINY["depth"]))
    assert (out.dropped_tokens is not None) == (family == "MoEDiT")
    (sample,) = model(x, t, y, return_dict=False)  # diffusers' tuple convention
    torch.testing.assert_close(sample, out.sample)


def test_scalar_timestep_equals_batched_and_wrong_size_is_refused():
    model = randomize(FAMILIES["DiT"]()).eval()
    x, _, y = make_batch()
    torch.testing.assert_close(model(x, 7, y).sample, model(x, torch.full((4,), 7), y).sample)
    with pytest.raises(ValueError, match="built for 8x8"):
        model(torch.randn(1, 2, 16, 16), 3, y[:1])


def test_dit_output_is_exactly_zero_at_init():
    model = FAMILIES["DiT"]().eval()
    x, t, y = make_batch()
    assert torch.count_nonzero(model(x, t, y).sample) == 0
    # ... and the initialisation is DiT's: frozen sin-cos positions, small label table.
    assert not any(name == "pos_embed" for name, _ in model.named_parameters())
    assert model.y_embedder.embedding_table.weight.std() < 0.05
    assert torch.count_nonzero(model.blocks[0].adaLN_modulation[-1].weight) == 0


@pytest.mark.parametrize("family", ["SwitchDiT", "MoEDiT"])
def test_moe_models_start_as_the_dit_with_the_same_weights(family):
    """Zero-initialised experts: an MoE model holding a (random) DiT's weights computes that DiT."""
    if family == "SwitchDiT":
        dit, moe = FAMILIES["DiT"](), FAMILIES["SwitchDiT"]()
    else:  # 2 routed + 1 shared expert, each as wide as the DiT's MLP
        dit, moe = FAMILIES["DiT"](mlp_ratio=1.0), FAMILIES["MoEDiT"](mlp_ratio=3.0, top_k=2)
    randomize(dit).eval()
    missing, unexpected = moe.load_state_dict(dit.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(".moe." in key for key in missing)
    moe.eval()
    x, t, y = make_batch()
    expected = dit(x, t, y).sample
    assert expected.abs().mean() > 0.1  # a real function, not the zero of adaLN-Zero
    torch.testing.assert_close(moe(x, t, y).sample, expected, rtol=0, atol=1e-6)
    # The experts are on the path: once they are non-zero, the function changes.
    with torch.no_grad():
        for block in moe.blocks:
            for name, parameter in block.moe.named_parameters():
                if "expert" in name:
                    parameter.normal_(0, 0.2)
    assert (moe(x, t, y).sample - expected).abs().max() > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_null_class_gives_the_unconditional_prediction(family):
    model = randomize(FAMILIES[family]()).eval()
    x, t, y = make_batch()
    null = torch.full_like(y, NUM_CLASSES)
    unconditional = model(x, t, null).sample
    torch.testing.assert_close(model(x, t, None).sample, unconditional)
    torch.testing.assert_close(
        model(x, t, y, force_drop_ids=torch.ones_like(y)).sample, unconditional
    )
    assert (model(x, t, y).sample - unconditional).abs().max() > 1e-3
    # Dropping only the first label changes only the first prediction.
    mixed = model(x, t, y, force_drop_ids=torch.tensor([1, 0, 0, 0])).sample
    torch.testing.assert_close(mixed[0], unconditional[0])
    torch.testing.assert_close(mixed[1:], model(x, t, y).sample[1:])


def test_null_class_id_is_configurable():
    model = randomize(FAMILIES["DiT"](null_class_id=0)).eval()
    x, t, y = make_batch()
    torch.testing.assert_close(model(x, t, None).sample, model(x, t, torch.zeros_like(y)).sample)
    with pytest.raises(ValueError, match="null_class_id"):
        FAMILIES["DiT"](null_class_id=NUM_CLASSES + 1)


def test_label_dropout_happens_only_in_training():
    torch.manual_seed(0)
    model = randomize(FAMILIES["DiT"](class_dropout_prob=0.5))
    x, t, _ = make_batch(batch=1)
    x, t = x.expand(64, -1, -1, -1), t.expand(64)
    label = torch.full((64,), 3)
    model.eval()
    conditional = model(x, t, label).sample
    unconditional = model(x, t, None).sample
    assert (conditional - unconditional).abs().amax(dim=(1, 2, 3)).min() > 1e-3

    def is_unconditional(sample):
        return (sample - unconditional).abs().amax(dim=(1, 2, 3)) < 1e-5

    assert not is_unconditional(model(x, t, label).sample).any()
    model.train()
    sample = model(x, t, label).sample
    dropped = is_unconditional(sample)
    kept = (sample - conditional).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (dropped | kept).all()
    assert 10 < int(dropped.sum()) < 54  # Binomial(64, 0.5)


# --------------------------------------------------------------------------- Switch-DiT


def capture_gate_logits(model: SwitchDiT, *inputs) -> list[torch.Tensor]:
    """The gate logits every block computed during one forward pass."""
    captured = []
    hooks = [
        block.moe.gate.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        for block in model.blocks
    ]
    model(*inputs)
    for hook in hooks:
        hook.remove()
    return captured


def test_switch_gate_depends_on_the_timestep_only():
    model = randomize(FAMILIES["SwitchDiT"]()).eval()
    x1, t, y1 = make_batch(seed=1)
    x2, _, y2 = make_batch(seed=2)
    first = capture_gate_logits(model, x1, t, y1)
    second = capture_gate_logits(model, x2, t, y2)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    other_t = capture_gate_logits(model, x1, (t + 37) % 100, y1)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(first, other_t, strict=True))
    # gates() is what the forward pass used, with exactly top_k experts per (sample, block).
    gates = model.gates(t)
    top_k = model.config.top_k
    assert gates.shape == (4, TINY["depth"], model.config.num_experts)
    assert ((gates > 0).sum(-1) == top_k).all()
    for block, logits in enumerate(first):
        probs = logits.softmax(-1)
        values, chosen = probs.topk(top_k, dim=-1)
        torch.testing.assert_close(
            gates[:, block], torch.zeros_like(probs).scatter(-1, chosen, values)
        )
    # All samples at the same timestep take the same experts.
    same_t = model.gates(torch.full((3,), 42))
    assert torch.equal(same_t[0] > 0, same_t[1] > 0) and torch.equal(same_t[0] > 0, same_t[2] > 0)
    torch.testing.assert_close(same_t[0].expand_as(same_t), same_t)


def test_diffusion_prior_mask_slides_a_window_of_k_times_depth_units():
    prior = diffusion_prior_mask(num_timesteps=100, depth=4, num_experts=3, top_k=2)
    assert prior.shape == (100, 12)
    assert (prior.sum(1) == 8).all()
    assert prior[0, :8].all() and prior[-1, -8:].all()  # from the first units to the last
    starts = prior.argmax(1)
    assert (starts.diff() >= 0).all()  # monotone in t ...
    assert ((prior[:, 1:] - prior[:, :-1]) != 0).sum(1).max() <= 2  # ... one contiguous window
    overlap = prior @ prior.T  # neighbouring timesteps share more units than distant ones
    assert overlap[99, 98] > overlap[99, 0] and overlap[0, 1] > overlap[0, 99]


def test_diffusion_prior_loss_is_nonnegative_and_zero_at_the_prior():
    depth, experts, top_k, steps = 3, 3, 2, 50
    prior = diffusion_prior_mask(steps, depth, experts, top_k)
    task = torch.tensor([0, 10, 30, 49])
    torch.manual_seed(0)
    probs = torch.randn(4, depth, experts).softmax(-1)
    table = (torch.rand(steps, depth * experts) < 0.5).float()
    assert diffusion_prior_loss(probs, table, prior, task) > 0
    assert jensen_shannon(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(
        math.log(2), abs=1e-4
    )
    # Gates equal to the prior (units permuted: the matching must undo it) -> zero loss.
    perm = torch.randperm(depth * experts)
    matching_probs = (prior[task][:, perm] / top_k).view(4, depth, experts)
    loss = diffusion_prior_loss(matching_probs, prior[:, perm], prior, task)
    assert float(loss) == pytest.approx(0.0, abs=1e-7)


def test_switch_prior_loss_is_the_weighted_aux_loss_in_training_only():
    model = randomize(FAMILIES["SwitchDiT"](prior_loss_weight=0.5))
    x, t, y = make_batch()
    model.train()
    out = model(x, t, y)
    unweighted = model.prior_loss(model.gate_probs(model.t_embedder(t)), t)
    assert float(unweighted.detach()) > 0
    torch.testing.assert_close(out.aux_loss, 0.5 * unweighted)
    out.aux_loss.backward()
    assert model.blocks[0].moe.gate[1].weight.grad.abs().sum() > 0  # the prior trains the gate
    model.eval()
    assert float(model(x, t, y).aux_loss) == 0.0


# --------------------------------------------------------------------------- MoE-DiT


def test_capacity_queue_keeps_first_choices_then_the_surest_tokens():
    # One image, 4 tokens, top-2 over 2 experts, capacity 2 per expert.
    chosen = torch.tensor([[[0, 1], [0, 1], [0, 1], [1, 0]]])
    confidence = torch.tensor([[0.6, 0.9, 0.7, 0.8]])
    kept = within_capacity(chosen, confidence, num_experts=2, capacity=2)
    # Expert 0, first choices by confidence: token 1 (0.9), token 2 (0.7) -> token 0 dropped;
    # expert 1, first choices: token 3; second choices by confidence: token 1 -> 0, 2 dropped;
    # token 3's second choice (expert 0) finds expert 0 full.
    expected = torch.tensor([[[False, False], [True, True], [True, False], [True, False]]])
    assert torch.equal(kept, expected)


def test_dropped_tokens_are_counted_and_pass_through():
    torch.manual_seed(0)
    moe = TokenRoutedMoE(16, 8, num_experts=4, top_k=1, capacity_factor=0.25)  # capacity 1
    randomize(moe)
    x = torch.randn(2, 12, 16)
    out, _, chosen, dropped = moe(x)
    used = sum(len(set(chosen[b, :, 0].tolist())) for b in range(2))  # one place per expert
    assert int(dropped) == 2 * 12 - used > 0
    assert (out.abs().sum(-1) == 0).sum() == int(dropped)  # dropped tokens get nothing
    moe.capacity_factor = None
    assert int(moe(x)[3]) == 0


def test_moe_dit_reports_dropped_assignments_per_block():
    model = FAMILIES["MoEDiT"](capacity_factor=0.01, top_k=2).eval()  # capacity 1 per image
    x, t, y = make_batch()
    dropped = model(x, t, y).dropped_tokens
    tokens = 4 * 16
    assert dropped.shape == (TINY["depth"],)
    assert ((dropped >= 2 * tokens - 4 * 4) & (dropped < 2 * tokens)).all()
    assert int(FAMILIES["MoEDiT"](capacity_factor=None)(x, t, y).dropped_tokens.sum()) == 0


def test_load_balancing_loss_on_a_hand_made_routing():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    chosen = torch.tensor([[0], [0], [0], [1]])
    torch.testing.assert_close(routing_fractions(chosen, 2), torch.tensor([0.75, 0.25]))
    # f = (0.75, 0.25), P = (0.725, 0.275): 2 * (0.75 * 0.725 + 0.25 * 0.275) = 1.225
    assert float(load_balancing_loss(probs, chosen)) == pytest.approx(1.225)
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    assert float(load_balancing_loss(uniform, balanced)) == pytest.approx(1.0)


def test_moe_dit_aux_loss_is_the_weighted_mean_balance_loss():
    model = randomize(FAMILIES["MoEDiT"](balance_loss_weight=0.1)).eval()
    x, t, y = make_batch()
    with torch.no_grad():
        out = model(x, t, y)
    assert 0.1 <= float(out.aux_loss) <= 0.1 * model.config.num_experts  # loss in [1, E]


# --------------------------------------------------------------------------- training


def diffusion_loss(model, x, t, y, noise) -> torch.Tensor:
    out = model(x + noise, t, y)
    return F.mse_loss(out.sample[:, : x.shape[1]], noise) + out.aux_loss


@pytest.mark.parametrize("family", ["SwitchDiT", "MoEDiT"])
def test_gradients_reach_every_expert(family):
    """adaLN-Zero opens the path step by step: final layer, gates, then the experts."""
    torch.manual_seed(0)
    model = FAMILIES[family](top_k=1).train()
    x, _, y = make_batch(batch=8)
    t = torch.linspace(0, 99, 8).long()  # timesteps that use different experts
    noise = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reached = set()
    for _ in range(5):
        optimizer.zero_grad()
        diffusion_loss(model, x, t, y, noise).backward()
        for name, parameter in model.named_parameters():
            if "expert" in name and parameter.grad is not None and parameter.grad.abs().sum() > 0:
                reached.add(name)
        optimizer.step()
    expert_parameters = {name for name, _ in model.named_parameters() if "expert" in name}
    used = model(x, t, y).expert_load.sum(0) > 0
    assert bool(used.all())  # the batch is chosen so that every expert takes some routing
    assert reached == expert_parameters


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_model_overfits_one_batch(family):
    torch.manual_seed(0)
    model = FAMILIES[family](class_dropout_prob=0.0).train()
    x, t, y = make_batch(batch=8)
    noise = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = diffusion_loss(model, x, t, y, noise)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- I/O, registry


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_and_load_pretrained_round_trip(family, tmp_path):
    model = randomize(FAMILIES[family](learn_sigma=False)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert public(loaded.config) == public(model.config)
    assert type(load_pretrained(tmp_path)) is type(model)  # the family comes from config.json
    x, t, y = make_batch()
    expected, got = model(x, t, y), loaded(x, t, y)
    assert torch.equal(got.sample, expected.sample)
    if expected.expert_load is not None:
        assert torch.equal(got.expert_load, expected.expert_load)


def public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def test_build_model_by_name_dict_and_saved_config(tmp_path):
    model = build_model("SwitchDiT-T/4", sample_size=28, in_channels=1, num_classes=10)
    assert isinstance(model, SwitchDiT)
    assert (model.config.hidden_size, model.config.depth, model.config.num_heads) == (192, 6, 4)
    assert model.config.patch_size == 4
    small = build_model({"name": "MoEDiT-S/2", "depth": 2, "num_experts": 4}, sample_size=8)
    assert isinstance(small, MoEDiT) and small.config.depth == 2 and small.config.hidden_size == 384
    # A size name plus a kind, as a training config gives them.
    switch = build_model("DiT-T/4", kind="switch-dit", sample_size=28, in_channels=1, top_k=1)
    assert isinstance(switch, SwitchDiT) and switch.config.hidden_size == 192
    assert isinstance(build_model("DiT-T/4", kind="MoEDiT", sample_size=28), MoEDiT)
    model.save_config(tmp_path)  # config.json names the class: enough to rebuild the model
    again = build_model(json.loads((tmp_path / "config.json").read_text()))
    assert isinstance(again, SwitchDiT) and public(again.config) == public(model.config)
    assert {"DiT-XL/2", "DiT-S/2", "SwitchDiT-B/4", "MoEDiT-L/8", "DiT-T/4"} <= set(MODEL_NAMES)
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        build_model("DiT-T/8", sample_size=28)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("DiT-Q/2")


def test_active_parameters_leave_out_unrouted_experts():
    dit = FAMILIES["DiT"]()
    assert dit.num_parameters(active_only=True) == dit.num_parameters()
    switch = FAMILIES["SwitchDiT"](num_experts=3, top_k=1)
    width, depth = TINY["hidden_size"], TINY["depth"]
    inactive = depth * 2 * (width * width + width)
    assert switch.num_parameters() - switch.num_parameters(active_only=True) == inactive
    # MoE-DiT, shared + top-1 at half DiT's width each: DiT's active MLP width, plus the router
    # (and one more output bias per block).
    moe = FAMILIES["MoEDiT"](num_experts=4, top_k=1)
    assert moe.expert_hidden_size == 2 * width
    extra = depth * (width * 4 + width)
    assert moe.num_parameters(active_only=True) == dit.num_parameters() + extra


# --------------------------------------------------------------------------- reference


def load_into_diffusers(dit: DiT, reference) -> None:
    """Copy a DiT's weights into diffusers' DiTTransformer2DModel of the same size."""
    ours = dit.state_dict()
    theirs = {
        "pos_embed.proj.weight": ours["x_embedder.proj.weight"],
        "pos_embed.proj.bias": ours["x_embedder.proj.bias"],
        "proj_out_1.weight": ours["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": ours["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": ours["final_layer.linear.weight"],
        "proj_out_2.bias": ours["final_layer.linear.bias"],
    }
    for i in range(len(dit.blocks)):
        block, ref = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = ref + "norm1.emb."  # diffusers keeps a copy of the embedders in every block
        theirs[emb + "class_embedder.embedding_table.weight"] = ours[
            "y_embedder.embedding_table.weight"
        ]
        for layer, index in (("linear_1", 0), ("linear_2", 2)):
            for kind in ("weight", "bias"):
                theirs[f"{emb}timestep_embedder.{layer}.{kind}"] = ours[
                    f"t_embedder.mlp.{index}.{kind}"
                ]
        for kind in ("weight", "bias"):
            theirs[f"{ref}norm1.linear.{kind}"] = ours[f"{block}adaLN_modulation.1.{kind}"]
            q, k, v = ours[f"{block}attn.qkv.{kind}"].chunk(3)
            theirs.update({f"{ref}attn1.to_q.{kind}": q, f"{ref}attn1.to_k.{kind}": k})
            theirs[f"{ref}attn1.to_v.{kind}"] = v
            theirs[f"{ref}attn1.to_out.0.{kind}"] = ours[f"{block}attn.proj.{kind}"]
            theirs[f"{ref}ff.net.0.proj.{kind}"] = ours[f"{block}mlp.fc1.{kind}"]
            theirs[f"{ref}ff.net.2.{kind}"] = ours[f"{block}mlp.fc2.{kind}"]
    reference.load_state_dict(theirs)


def test_dit_matches_diffusers_dit_with_the_same_weights():
    """An independent implementation of the same network: patchify, sin-cos positions,
    adaLN-Zero order of shift/scale/gate, attention, MLP, final layer, unpatchify."""
    from diffusers import DiTTransformer2DModel

    dit = randomize(FAMILIES["DiT"](class_dropout_prob=0.1), std=0.1).eval()
    heads, width = TINY["num_heads"], TINY["hidden_size"]
    reference = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=TINY["in_channels"],
        out_channels=2 * TINY["in_channels"],
        num_layers=TINY["depth"],
        sample_size=TINY["sample_size"],
        patch_size=TINY["patch_size"],
        num_embeds_ada_norm=NUM_CLASSES,
        norm_num_groups=1,
    ).eval()
    load_into_diffusers(dit, reference)
    # diffusers' DiT spaces its timestep frequencies by 1/(half - 1), the official code (and
    # ours) by 1/half; align that one constant to compare everything else.
    for block in reference.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    x, t, y = make_batch()
    expected = reference(x, t, y).sample
    torch.testing.assert_close(dit(x, t, y).sample, expected, rtol=1e-4, atol=1e-4)
