"""MoE-DiT: DiT whose MLP is a token-routed top-k mixture of experts plus a shared expert.

The language-model recipe (Switch Transformer, GShard, DeepSeekMoE) applied to DiT, as the
third point of comparison next to DiT and Switch-DiT: here every token chooses its experts
from its own content (after the block's adaLN), where Switch-DiT routes a whole sample by its
timestep.

- Router: a bias-free linear map to E logits, softmax, top-k per token. A token's output is
  sum_e p_e * expert_e(h) with the raw softmax probabilities (not renormalised over the k),
  so the router also learns from the diffusion loss (Switch Transformer, DeepSeekMoE).
- Shared expert: an MLP every token goes through (DeepSeekMoE). It keeps DiT's name ``mlp``,
  so a DiT of the same expert width loads into an MoE-DiT and, the routed experts being
  zero-initialised (their output projection), the MoE-DiT starts as exactly that DiT.
- Capacity: each expert takes at most ceil(capacity_factor * L * k / E) assignments per
  image. Per image, not per batch, so an image's prediction does not depend on the other
  images of the batch (the two halves of classifier-free guidance, the batch size). Queue
  order: every token's first choice before any second choice (GShard), and within a choice
  the tokens the router is surest of first (V-MoE's batch prioritized routing), so what is
  dropped is not decided by the token's place in the image. A dropped assignment contributes
  nothing: a token dropped by all its experts keeps the residual (and the shared expert).
  ``capacity_factor=None`` drops nothing.
- Load balancing (Switch Transformer eq. 4): E * sum_e f_e * P_e, f_e the share of the
  top-k assignments routed to e (before capacity), P_e the mean router probability of e;
  1 when uniform. Averaged over blocks and weighted by ``balance_loss_weight``.
- Width: by default each expert (shared and routed) has mlp_ratio / (k + shared) of the
  hidden width, so a token uses as many MLP parameters as in a DiT with the same
  ``mlp_ratio``: equal active parameters (plus the router). ``expert_mlp_ratio`` overrides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffusion.models.dit import DiffusionTransformer, DiTBlock, Mlp, modulate

#################################################################################
#                          Routing, capacity, balance                           #
#################################################################################


def routing_fractions(chosen: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(..., k) chosen experts -> (E,) share of the assignments each expert received."""
    return F.one_hot(chosen, num_experts).flatten(0, -2).float().mean(0)


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e for router probabilities (..., E) and choices (..., k)."""
    num_experts = probs.shape[-1]
    mean_prob = probs.flatten(0, -2).mean(0)
    return num_experts * (routing_fractions(chosen, num_experts) * mean_prob).sum()


def within_capacity(
    chosen: torch.Tensor, confidence: torch.Tensor, num_experts: int, capacity: int
) -> torch.Tensor:
    """(B, L, k) bool: whether each assignment finds a place in its expert's queue.

    Per image, each expert keeps its first ``capacity`` assignments, queued by choice rank
    (all first choices, then all second choices, ...) and, within a rank, by ``confidence``
    (B, L), highest first.
    """
    batch, length, top_k = chosen.shape
    priority = confidence.argsort(dim=1, descending=True)[..., None].expand(-1, -1, top_k)
    ranked = chosen.gather(1, priority)  # tokens in priority order
    queue = F.one_hot(ranked.transpose(1, 2).reshape(batch, top_k * length), num_experts)
    position = ((queue.cumsum(1) - 1) * queue).sum(-1)  # place in its expert's queue
    kept_ranked = (position < capacity).view(batch, top_k, length).transpose(1, 2)
    return torch.empty_like(kept_ranked).scatter_(1, priority, kept_ranked)


class TokenRoutedMoE(nn.Module):
    """Top-k token-choice routing over E MLP experts with a per-image capacity."""

    def __init__(
        self,
        hidden_size: int,
        expert_hidden_size: int,
        num_experts: int,
        top_k: int,
        capacity_factor: float | None,
    ):
        super().__init__()
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(
            Mlp(hidden_size, expert_hidden_size) for _ in range(num_experts)
        )

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> output (B, L, D), router probs (B, L, E), choices (B, L, k),
        number of assignments dropped for capacity."""
        _, length, width = x.shape
        num_experts = len(self.experts)
        probs = self.router(x).float().softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.capacity_factor is None:
            kept = torch.ones_like(chosen, dtype=torch.bool)
        else:
            capacity = math.ceil(self.capacity_factor * length * self.top_k / num_experts)
            kept = within_capacity(chosen, weights[..., 0], num_experts, capacity)

        tokens = x.reshape(-1, width)
        chosen_flat, kept_flat = chosen.reshape(-1, self.top_k), kept.reshape(-1, self.top_k)
        weights_flat = weights.reshape(-1, self.top_k).to(x.dtype)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            token, slot = ((chosen_flat == index) & kept_flat).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            out.index_add_(0, token, expert(tokens[token]) * weights_flat[token, slot, None])
        return out.view_as(x), probs, chosen, (~kept).sum()


#################################################################################
#                                  MoE-DiT block                                #
#################################################################################


class MoEDiTBlock(DiTBlock):
    """DiT block whose MLP is shared expert + routed experts, behind the same adaLN gate."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        expert_hidden_size: int,
        num_experts: int,
        top_k: int,
        capacity_factor: float | None,
        shared_expert: bool,
    ):
        super().__init__(hidden_size, num_heads, expert_hidden_size)  # self.mlp: shared expert
        self.shared_expert = shared_expert
        if not shared_expert:
            del self.mlp
        self.moe = TokenRoutedMoE(
            hidden_size, expert_hidden_size, num_experts, top_k, capacity_factor
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        out, probs, chosen, dropped = self.moe(h)
        if self.shared_expert:
            out = out + self.mlp(h)
        return x + gate_mlp * out, (probs, chosen, dropped)


#################################################################################
#                                  MoE-DiT model                                #
#################################################################################


class MoEDiT(DiffusionTransformer):
    """DiT with a token-routed top-k MoE (and a shared expert) in place of every MLP."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        num_classes: int = 1000,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        null_class_id: int | None = None,
        learn_sigma: bool = True,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float | None = 1.25,
        shared_expert: bool = True,
        balance_loss_weight: float = 0.01,
        expert_mlp_ratio: float | None = None,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k {top_k} must be in [1, num_experts={num_experts}]")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor {capacity_factor} must be > 0 (or None)")
        self._build_trunk(
            sample_size=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_classes=num_classes,
            class_dropout_prob=class_dropout_prob,
            null_class_id=null_class_id,
            learn_sigma=learn_sigma,
        )
        if expert_mlp_ratio is None:
            expert_mlp_ratio = mlp_ratio / (top_k + int(shared_expert))
        self.expert_hidden_size = int(hidden_size * expert_mlp_ratio)
        self.blocks = nn.ModuleList(
            MoEDiTBlock(
                hidden_size,
                num_heads,
                self.expert_hidden_size,
                num_experts,
                top_k,
                capacity_factor,
                shared_expert,
            )
            for _ in range(depth)
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for block in self.blocks:  # routed experts start silent: the model starts as a DiT
            for expert in block.moe.experts:
                nn.init.zeros_(expert.fc2.weight)
                nn.init.zeros_(expert.fc2.bias)

    def _run_blocks(self, tokens, c, t, t_emb):
        num_experts = self.config.num_experts
        losses, loads, dropped = [], [], []
        for block in self.blocks:
            tokens, (probs, chosen, block_dropped) = block(tokens, c)
            losses.append(load_balancing_loss(probs, chosen))
            loads.append(routing_fractions(chosen, num_experts))
            dropped.append(block_dropped)
        return tokens, {
            "aux_loss": self.config.balance_loss_weight * torch.stack(losses).mean(),
            "expert_load": torch.stack(loads),
            "dropped_tokens": torch.stack(dropped),
        }

    def _inactive_parameters(self) -> int:
        width, expert_width = self.config.hidden_size, self.expert_hidden_size
        per_expert = 2 * width * expert_width + expert_width + width
        unused = self.config.num_experts - self.config.top_k
        return len(self.blocks) * unused * per_expert
