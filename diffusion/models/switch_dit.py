"""Switch-DiT: DiT with a timestep-gated sparse mixture of experts in every block.

Park et al., "Switch Diffusion Transformer: Synergizing Denoising Tasks with Sparse
Mixture-of-Experts", ECCV 2024 (arXiv 2403.09176). Denoising at each timestep is treated as
a task; tasks that conflict should use different parameters, similar ones should share.
Sources: the paper's method as its authors state it (equations and sentences quoted below,
from the project page byeongjun-park.github.io/Switch-DiT) and the authors' code
(github.com/byeongjun-park/Switch-DiT: models/MoE.py, models/DiT/models.py) for what the
equations leave open; facts taken over, no code copied.

Sparse MoE of a block (paper, "Switch Diffusion Transformer"; equations of m(z_i), g_i(e_t)):
    g_i(e_t) = TopK(Softmax(h_i(e_t)), k)            h_i: SiLU -> Linear on the timestep
    m(z_i)   = 1 + sum_j g_ij(e_t) E_ij(z_i)         E_ij: a token-wise linear map D -> D
The gate sees the timestep embedding e_t only (not the tokens, not the label), so every token
of a sample takes the same k of the M experts, and the routing of a timestep can be computed
before sampling (``SwitchDiT.gates``). ``m`` acts as a soft channel mask on the block's
input: ``z * m`` goes through attention and MLP, ``z * (1 - m)`` skips to the block's end
(paper: "Then, z_i * m(z_i) is processed into the remaining transformer block, and
z_i * (1 - m(z_i)) is skip-connected to the end"). The experts are zero-initialised and the
mask is 1 + their gated sum, as in the authors' code, so ``m = 1`` at initialisation and the
model starts exactly as a DiT with the same weights; the MoE thus sits alongside the MLP and
attention rather than replacing the MLP. Only the k selected experts are evaluated.

Diffusion prior loss (paper, "Diffusion Prior Loss"), weighted by lambda_dp =
``prior_loss_weight``; the model is trained on L_noise,t + lambda_dp * L_dp,t with
    L_dp,t = D_JS( p_tot(e_t) / N , w_t^prior / (k N) )
- p_tot(e_t): the dense softmax gates of all N blocks side by side, a vector over the N*M
  (block, expert) units; each block's part sums to 1, so p_tot / N is a distribution.
- w_t^prior: a 0/1 mask over the same N*M units with k*N ones, built as Denoising Task
  Routing (DTR, Park et al., ICLR 2024) builds its channel masks: a window of k*N consecutive
  units that slides from the first unit (t = 0) to the last (t = T-1) with its start at
  round((t / (T-1))**alpha * (N*M - k*N)). Neighbouring timesteps share almost all their
  units and distant ones share few, which is the prior "similar tasks share denoising paths,
  conflicting ones are isolated". alpha = 4 as in the authors' code: the window moves
  slowly at low noise and fast at high noise.
- Which expert of which block plays which prior unit is not fixed: before each loss the
  units are matched (Hungarian algorithm, as in the authors' code) so that the top-k
  indicator of the gates at every training timestep is as close as possible (L1 over
  timesteps) to the matched prior columns; the JS divergence then pulls the dense gates of
  the batch towards the matched prior.
Assumptions: timesteps are integer DDPM steps in [0, num_train_timesteps); a fractional one
is rounded for the prior. Ties in the matching's 0/1 cost are broken deterministically (the
authors shuffle the units first, breaking them at random). The loss is computed in training
mode only, as a regulariser; ``aux_loss`` is zero in eval mode. The matching uses SciPy's
``linear_sum_assignment`` (a dependency of MLflow, so present wherever the platform is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffusion.models.dit import DiffusionTransformer, DiTBlock, modulate

#################################################################################
#                               Diffusion prior                                 #
#################################################################################


def diffusion_prior_mask(
    num_timesteps: int, depth: int, num_experts: int, top_k: int, alpha: float = 4.0
) -> torch.Tensor:
    """(num_timesteps, depth * num_experts) 0/1 prior: a window of depth*top_k units sliding
    with (t / (T-1))**alpha from the first unit to the last (see the module docstring)."""
    units, width = depth * num_experts, depth * top_k
    progress = torch.linspace(0, 1, num_timesteps, dtype=torch.float64) ** alpha
    start = (progress * (units - width)).round().long()[:, None]
    unit = torch.arange(units)[None]
    return ((unit >= start) & (unit < start + width)).float()


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-wise JS divergence (natural log) of distributions over the last dimension."""
    m = (p + q) / 2
    log_m = (m + eps).log()
    return ((p * ((p + eps).log() - log_m)).sum(-1) + (q * ((q + eps).log() - log_m)).sum(-1)) / 2


@torch.no_grad()
def match_prior_units(gate_table: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """perm such that gate unit i is paired with prior unit perm[i], minimising
    sum_i sum_t |gate_table[t, i] - prior[t, perm[i]]| (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(gate_table.T.double(), prior.T.double(), p=1)
    _, columns = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(columns, device=prior.device)


def diffusion_prior_loss(
    gate_probs: torch.Tensor, gate_table: torch.Tensor, prior: torch.Tensor, task: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of D_JS(p_tot / N, matched w_t^prior / (k N)).

    Args:
        gate_probs: (B, N, M) dense softmax gates of the batch.
        gate_table: (T, N * M) top-k indicators of the gates at every training timestep,
            used only to match gate units to prior units.
        prior: (T, N * M) 0/1 prior mask (``diffusion_prior_mask``).
        task: (B,) integer timestep of each sample.
    """
    depth = gate_probs.shape[1]
    matched = prior[task][:, match_prior_units(gate_table, prior)]
    target = matched / matched.sum(-1, keepdim=True)
    return jensen_shannon(gate_probs.flatten(1) / depth, target.to(gate_probs.dtype)).mean()


#################################################################################
#                         Timestep-gated experts and block                      #
#################################################################################


class TimestepGatedExperts(nn.Module):
    """One block's SMoE: gate h(e_t) -> M logits; M linear experts on the tokens -> mask m."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, num_experts))
        # (M, out, in), zero-initialised so that m = 1 and the block starts as DiT's.
        self.expert_weight = nn.Parameter(torch.zeros(num_experts, hidden_size, hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, hidden_size))

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), gates (B, M) with k non-zeros a row -> m (B, L, D)."""
        mask = torch.ones_like(x)
        for expert in range(gates.shape[1]):
            rows = gates[:, expert].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            y = F.linear(x[rows], self.expert_weight[expert], self.expert_bias[expert])
            mask.index_add_(0, rows, y * gates[rows, expert, None, None].to(y.dtype))
        return mask


class SwitchDiTBlock(DiTBlock):
    """DiT block whose attention and MLP see ``z * m``; ``z * (1 - m)`` skips to the end."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int, num_experts: int):
        super().__init__(hidden_size, num_heads, mlp_hidden_size)
        self.moe = TimestepGatedExperts(hidden_size, num_experts)

    def forward(self, x: torch.Tensor, c: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        routed = x * self.moe(x, gates)
        attended = gate_msa * self.attn(modulate(self.norm1(routed), shift_msa, scale_msa))
        mixed = gate_mlp * self.mlp(modulate(self.norm2(routed + attended), shift_mlp, scale_mlp))
        # The paper's (z*m + attended + mixed) + z*(1-m), with z*m and -z*m cancelled.
        return x + attended + mixed


#################################################################################
#                                Switch-DiT model                               #
#################################################################################


class SwitchDiT(DiffusionTransformer):
    """DiT with a timestep-gated top-k of M experts in every block and the diffusion prior loss.

    Defaults: DiT-XL/2 sizes, M = 3 experts, k = 2 (the paper's setting), lambda_dp = 1 (the
    authors' config; they note it is to be tuned).
    """

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
        num_experts: int = 3,
        top_k: int = 2,
        prior_loss_weight: float = 1.0,
        num_train_timesteps: int = 1000,
        prior_alpha: float = 4.0,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k {top_k} must be in [1, num_experts={num_experts}]")
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
        mlp_hidden_size = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(
            SwitchDiTBlock(hidden_size, num_heads, mlp_hidden_size, num_experts)
            for _ in range(depth)
        )
        prior = diffusion_prior_mask(num_train_timesteps, depth, num_experts, top_k, prior_alpha)
        self.register_buffer("prior", prior, persistent=False)  # derived from the config
        self.initialize_weights()

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for block in self.blocks:
            nn.init.zeros_(block.moe.expert_weight)
            nn.init.zeros_(block.moe.expert_bias)

    def gate_probs(self, t_emb: torch.Tensor) -> torch.Tensor:
        """(B, D) timestep embeddings -> (B, depth, M) dense softmax gates of every block."""
        return torch.stack([block.moe.gate(t_emb).float().softmax(-1) for block in self.blocks], 1)

    def _top_k(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse gates (the top-k probabilities, zeros elsewhere) and the chosen experts."""
        values, chosen = probs.topk(self.config.top_k, dim=-1)
        return torch.zeros_like(probs).scatter(-1, chosen, values), chosen

    @torch.no_grad()
    def gates(self, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """(B, depth, M) sparse gates for (B,) timesteps (or a scalar: B = 1).

        The routing depends on the timestep alone, so a sampler can compute it once per
        denoising step, for all images and both halves of classifier-free guidance.
        """
        t = torch.as_tensor(timestep, device=self.device).reshape(-1)
        return self._top_k(self.gate_probs(self.t_embedder(t)))[0]

    def _run_blocks(self, tokens, c, t, t_emb):
        probs = self.gate_probs(t_emb)
        gates, chosen = self._top_k(probs)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, c, gates[:, index])
        num_experts = self.config.num_experts
        routing = {"expert_load": F.one_hot(chosen, num_experts).float().mean(dim=(0, 2))}
        if self.training:
            routing["aux_loss"] = self.config.prior_loss_weight * self.prior_loss(probs, t)
        return tokens, routing

    def prior_loss(self, gate_probs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Unweighted diffusion prior loss of a batch's dense gates (B, depth, M)."""
        num_timesteps = self.prior.shape[0]
        with torch.no_grad():  # the gates at every timestep, only to match units to the prior
            every_t = torch.arange(num_timesteps, device=gate_probs.device)
            table = self._top_k(self.gate_probs(self.t_embedder(every_t)))[0] > 0
        task = timestep.float().round().long().clamp(0, num_timesteps - 1)
        return diffusion_prior_loss(gate_probs, table.flatten(1).float(), self.prior, task)

    def _inactive_parameters(self) -> int:
        unused = self.config.num_experts - self.config.top_k
        width = self.config.hidden_size
        return len(self.blocks) * unused * (width * width + width)
