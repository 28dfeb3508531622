"""HSTU: Hierarchical Sequential Transduction Units ("Actions Speak Louder than Words").

Each block, on jagged activations x of shape (total_tokens, d):

    U, V, Q, K = split(SiLU(LayerNorm(x) @ W_uvqk))          # one fused projection
    A          = SiLU(alpha * Q K^T + rab) / n, causal        # pointwise, no softmax
    y          = x + W_o(dropout(LayerNorm(A V) * U))

``rab`` is a learned relative bias from the position gap and from the
log-bucketed time gap (time only when timestamps exist); ``n`` is the maximum
sequence length as in the reference code, or each sequence's own length.
The attention runs through ``kernels.hstu_attention``, which picks the
fastest implementation for the device and never pads more than it must.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import hstu_attention

_LN_EPS = 1e-6


class RelativeBias(nn.Module):
    """Learned bias by position gap (2L-1 values) and log2 time-gap bucket."""

    def __init__(self, max_seq_len: int, num_time_buckets: int, use_time: bool, use_position: bool):
        super().__init__()
        self.position = (
            nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02))
            if use_position
            else None
        )
        self.time = (
            nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0, 0.02)) if use_time else None
        )


class HSTUBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        max_seq_len: int,
        dropout: float,
        alpha: float,
        normalizer: str,
        num_time_buckets: int,
        use_time_bias: bool,
        use_position_bias: bool,
        attention_impl: str = "auto",
    ):
        super().__init__()
        self.attention_impl = attention_impl
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.max_seq_len = max_seq_len
        self.alpha = alpha
        self.normalizer = normalizer
        self.dropout = dropout
        width = num_heads * (2 * linear_dim + 2 * attention_dim)
        # No bias in the fused projection, as in the reference implementation.
        self.uvqk = nn.Parameter(torch.empty(dim, width).normal_(0, 0.02))
        self.output = nn.Linear(num_heads * linear_dim, dim)
        nn.init.xavier_uniform_(self.output.weight)
        self.bias = RelativeBias(max_seq_len, num_time_buckets, use_time_bias, use_position_bias)

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        h, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        projected = F.silu(F.layer_norm(x, (x.shape[-1],), eps=_LN_EPS) @ self.uvqk)
        u, v, q, k = projected.split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        normalizer = (
            (offsets[1:] - offsets[:-1]).clamp(min=1) if self.normalizer == "length" else None
        )
        use_time = self.bias.time is not None and timestamps is not None
        attended = hstu_attention(
            q.reshape(-1, h, dqk),
            k.reshape(-1, h, dqk),
            v.reshape(-1, h, dv),
            offsets,
            self.max_seq_len,
            alpha=self.alpha,
            causal=True,
            position_bias=self.bias.position,
            time_bias=self.bias.time if use_time else None,
            timestamps=timestamps if use_time else None,
            normalizer=normalizer,
            impl=self.attention_impl,
        ).reshape(-1, h * dv)
        gated = F.layer_norm(attended, (h * dv,), eps=_LN_EPS) * u
        return x + self.output(F.dropout(gated, self.dropout, self.training))


class HSTUEncoder(nn.Module):
    """Stack of HSTU blocks over jagged sequences; returns L2-normalised states."""

    def __init__(self, config, max_seq_len: int):
        super().__init__()
        dim = config.embedding_dim
        self.blocks = nn.ModuleList(
            HSTUBlock(
                dim=dim,
                num_heads=config.num_heads,
                attention_dim=config.attention_dim or dim // config.num_heads,
                linear_dim=config.linear_dim or dim // config.num_heads,
                max_seq_len=max_seq_len,
                dropout=config.dropout,
                alpha=config.hstu_alpha,
                normalizer=config.hstu_normalizer,
                num_time_buckets=config.time_buckets,
                use_time_bias=config.time_bias,
                use_position_bias=config.position_bias,
                attention_impl=config.attention_impl,
            )
            for _ in range(config.num_blocks)
        )

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, offsets, timestamps)
        return x
