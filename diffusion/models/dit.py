"""DiT: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie, ICCV 2023).

Follows the semantics of facebookresearch/DiT ``models.py``: patchify with a strided
convolution, fixed 2-D sin-cos position embedding, timestep and label embedders summed into
one conditioning vector ``c``, blocks whose LayerNorm shift/scale and residual gates come from
``c`` (zero-initialised, so every block starts as the identity), a zero-initialised final
layer and an optional learned variance. ``DiffusionTransformer`` is the trunk that the
mixture-of-experts families (``switch_dit.py``, ``moe_dit.py``) reuse; only the blocks differ.

The model predicts; it knows nothing of noise schedules or guidance (see ``diffusion.pipeline``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffusion.models.outputs import DiffusionTransformerOutput


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: shift/scale are (B, 1, D) and apply to every token of a sample."""
    return x * (1 + scale) + shift


#################################################################################
#                     Embedding layers for patches, timesteps, labels            #
#################################################################################


class PatchEmbedder(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D): a conv with stride p is a linear map of each patch."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(hidden_size: int, grid_size: int) -> torch.Tensor:
    """(grid_size**2, hidden_size) fixed sin-cos embedding of a square patch grid (MAE / DiT).

    Half the channels encode the column, half the row, each as [sin, cos] over hidden_size/4
    frequencies; tokens are ordered row-major, as ``PatchEmbedder`` flattens them.
    """
    quarter = hidden_size // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Scalar (possibly fractional) timesteps -> D: 256-dim sinusoid, then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(N,) -> (N, dim) [cos, sin] features with periods from 2*pi to ~max_period (GLIDE)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        frequencies = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class ids -> D, with one extra "null" row for classifier-free guidance.

    The table has num_classes + 1 rows: ids 0..num_classes, one of which (``null_class_id``,
    by default num_classes) means "no label". In training each label is replaced by the null
    id with probability ``dropout_prob`` so the same network also learns the unconditional
    prediction; at inference the null id (or ``force_drop_ids``) asks for it explicitly.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float, null_class_id: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.dropout_prob = dropout_prob
        self.null_class_id = null_class_id

    def forward(
        self,
        labels: torch.Tensor | None,
        batch_size: int,
        train: bool,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device = self.embedding_table.weight.device
        if labels is None:
            labels = torch.full((batch_size,), self.null_class_id, device=device)
        labels = torch.as_tensor(labels, device=device).long().expand(batch_size)
        if force_drop_ids is not None:  # as in DiT: an explicit request replaces random dropout
            drop = torch.as_tensor(force_drop_ids, device=device).bool()
        elif train and self.dropout_prob > 0:
            drop = torch.rand(batch_size, device=device) < self.dropout_prob
        else:
            return self.embedding_table(labels)
        return self.embedding_table(torch.where(drop, self.null_class_id, labels))


#################################################################################
#                                  DiT blocks                                   #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention (timm's layout: one qkv projection with bias, then proj)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = (self.num_heads, width // self.num_heads)
        q, k, v = (
            part.view(batch, length, *heads).transpose(1, 2)  # (B, heads, L, head_dim)
            for part in self.qkv(x).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, DiT's feed-forward (and the experts' shape)."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Attention + MLP, each behind adaLN-Zero: shift/scale/gate regressed from SiLU(c).

    The regression is zero-initialised, so gates start at 0 and the block is the identity:
    a deep stack then trains like a shallow one at first (DiT, Sec. 3.2).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each (B, 1, D)."""
        return self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


#################################################################################
#                                  Final layer                                  #
#################################################################################


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map of each token to its p*p*C_out pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                          The trunk all families share                         #
#################################################################################


class DiffusionTransformer(ModelMixin, ConfigMixin):
    """Embedders, final layer, weight initialisation and forward shared by the three families.

    Subclasses register their config (``@register_to_config``), build ``self.blocks`` and
    implement ``_run_blocks``; MoE families also report how many of their parameters a token
    does not use (``_inactive_parameters``) so ``num_parameters(active_only=True)`` can compare
    models at equal active parameters.
    """

    def _build_trunk(
        self,
        *,
        sample_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        num_heads: int,
        num_classes: int,
        class_dropout_prob: float,
        null_class_id: int | None,
        learn_sigma: bool,
    ) -> None:
        if sample_size % patch_size:
            raise ValueError(
                f"sample_size {sample_size} is not divisible by patch_size {patch_size}: "
                f"choose one that divides it: {[p for p in range(1, 17) if sample_size % p == 0]}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of 4 (2-D sin-cos)")
        null_class_id = num_classes if null_class_id is None else null_class_id
        if not 0 <= null_class_id <= num_classes:
            raise ValueError(f"null_class_id {null_class_id} must be in [0, {num_classes}]")
        if not 0 <= class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob {class_dropout_prob} must be in [0, 1)")

        self.sample_size = sample_size
        self.patch_size = patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.x_embedder = PatchEmbedder(patch_size, in_channels, hidden_size)
        # Fixed, not learned (DiT); a persistent buffer, so checkpoints are self-contained.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, sample_size // patch_size).unsqueeze(0)
        )
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob, null_class_id)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def initialize_weights(self) -> None:
        """DiT's initialisation; subclasses then zero their experts' outputs."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        # The patch embedding is a linear map of each flattened patch: initialise it as one.
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # ... and the output starts at exactly zero.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W)."""
        p, channels = self.patch_size, self.out_channels
        side = self.sample_size // p
        x = x.reshape(x.shape[0], side, side, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, side * p, side * p)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        force_drop_ids: torch.Tensor | None = None,
    ) -> DiffusionTransformerOutput | tuple[torch.Tensor]:
        """Predict for a batch of noisy inputs.

        Args:
            x: (B, in_channels, sample_size, sample_size).
            timestep: (B,) or a scalar, integer or fractional.
            class_labels: (B,) ids; the null id (or None for the whole batch) asks for the
                unconditional prediction.
            return_dict: False returns ``(sample,)`` like diffusers models.
            force_drop_ids: (B,) 1/True where the label is to be replaced by the null id;
                given, it replaces the random training dropout.
        """
        batch, _, height, width = x.shape
        if (height, width) != (self.sample_size, self.sample_size):
            raise ValueError(
                f"input is {height}x{width}; this model was built for "
                f"{self.sample_size}x{self.sample_size}"
            )
        t = torch.as_tensor(timestep, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t
        if t.shape != (batch,):
            raise ValueError(f"timestep must be a scalar or ({batch},), got {tuple(t.shape)}")

        t_emb = self.t_embedder(t)
        c = t_emb + self.y_embedder(class_labels, batch, self.training, force_drop_ids)
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        tokens, routing = self._run_blocks(tokens, c, t, t_emb)
        sample = self.unpatchify(self.final_layer(tokens, c))
        if not return_dict:
            return (sample,)
        routing.setdefault("aux_loss", sample.new_zeros(()))
        return DiffusionTransformerOutput(sample=sample, **routing)

    def _run_blocks(
        self, tokens: torch.Tensor, c: torch.Tensor, t: torch.Tensor, t_emb: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Tokens after the blocks, and the output's routing fields (aux_loss, expert_load, ...)."""
        raise NotImplementedError

    def _inactive_parameters(self) -> int:
        """Parameters a token skips: (num_experts - top_k) experts per MoE layer."""
        return 0

    def num_parameters(
        self,
        only_trainable: bool = False,
        exclude_embeddings: bool = False,
        active_only: bool = False,
    ) -> int:
        """diffusers' count; ``active_only`` leaves out the experts a token is not routed to."""
        total = super().num_parameters(only_trainable, exclude_embeddings)
        return total - self._inactive_parameters() if active_only else total


#################################################################################
#                                   DiT model                                   #
#################################################################################


class DiT(DiffusionTransformer):
    """Diffusion transformer with adaLN-Zero blocks; defaults are DiT-XL/2 on 32x32x4 latents."""

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
    ):
        super().__init__()
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
            DiTBlock(hidden_size, num_heads, mlp_hidden_size) for _ in range(depth)
        )
        self.initialize_weights()

    def _run_blocks(self, tokens, c, t, t_emb):
        for block in self.blocks:
            tokens = block(tokens, c)
        return tokens, {}


#################################################################################
#                                 Size registry                                 #
#################################################################################

# Width, depth and heads of the DiT paper's sizes (Table 1), plus two tiny ones that train on
# a 2-core CPU in well under a second a step at 28x28, patch 4. A model name is
# "<family>-<size>/<patch>", e.g. "DiT-S/2", "SwitchDiT-T/4", "MoEDiT-XS/4".
MODEL_SIZES: dict[str, dict[str, int]] = {
    "XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
    "L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "XS": {"hidden_size": 256, "depth": 6, "num_heads": 4},
    "T": {"hidden_size": 192, "depth": 6, "num_heads": 4},
}
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)
