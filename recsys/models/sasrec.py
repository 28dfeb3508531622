"""SASRec (Kang & McAuley, 2018): causal softmax self-attention, the baseline.

Same harness as HSTU (input embedding, loss, L2-normalised output), so the
comparison is like for like; only the blocks differ. Blocks follow the
reference implementation: Q = LayerNorm(x); x = Q + MHA(Q, x, x); then a
LayerNorm and a ReLU feed-forward with a residual; one final LayerNorm.
Attention runs on a per-batch padded view (only as wide as the batch's
longest sequence); padding sits after each sequence, so the causal mask
alone keeps real positions from seeing it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import jagged_to_padded, padded_to_jagged


class SASRecBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads
        queries = self.attention_norm(x)
        # Queries come from the normalised input, keys and values from the raw one (reference SASRec).
        q = F.linear(queries, self.qkv.weight[:dim], self.qkv.bias[:dim])
        k, v = F.linear(x, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        split = lambda t: t.view(batch, length, heads, dim // heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(
            split(q),
            split(k),
            split(v),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = queries + self.attention_out(attended.transpose(1, 2).reshape(batch, length, dim))
        x = self.ffn_norm(x)
        return x + self.ffn(x)


class SASRecEncoder(nn.Module):
    def __init__(self, config, max_seq_len: int):
        super().__init__()
        dim = config.embedding_dim
        if dim % config.num_heads:
            raise ValueError(
                f"embedding_dim {dim} is not divisible by num_heads {config.num_heads}"
            )
        self.blocks = nn.ModuleList(
            SASRecBlock(dim, config.num_heads, config.ffn_dim or dim, config.dropout)
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        del timestamps  # SASRec has no time signal
        lengths = offsets[1:] - offsets[:-1]
        width = int(lengths.max()) if lengths.numel() else 0
        padded = jagged_to_padded(x, offsets, width)
        for block in self.blocks:
            padded = block(padded)
        return padded_to_jagged(self.final_norm(padded), offsets)
