"""SASRec (Kang & McAuley, 2018): causal softmax self-attention, the baseline.

Same harness as HSTU (input embedding, loss, L2-normalised output), so the
comparison is like for like; only the blocks differ. Blocks follow the
reference implementation: Q = LayerNorm(x); x = Q + MHA(Q, x, x); then a
LayerNorm and a ReLU feed-forward with a residual; one final LayerNorm.
Attention runs on a per-batch padded view (only as wide as the batch's
longest sequence); padding sits after each sequence, so the causal mask
alone keeps real positions from seeing it.

Target-aware candidates (``encode_history`` once, then ``attend_candidates``)
share the blocks' ``project`` and ``finish``; only the attention differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import jagged_to_padded, padded_to_jagged

from .history import HistoryCache


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

    def project(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., d) -> LayerNorm(x) (the residual stream) and q, k, v split by head (..., h, d / h).

        Queries come from the normalised input, keys and values from the raw one (reference SASRec).
        """
        dim = x.shape[-1]
        queries = self.attention_norm(x)
        q = F.linear(queries, self.qkv.weight[:dim], self.qkv.bias[:dim])
        k, v = F.linear(x, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.num_heads, dim // self.num_heads))  # noqa: E731
        return queries, split(q), split(k), split(v)

    def finish(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Attention output (..., h, d / h) -> residual on the queries, then the feed-forward."""
        x = queries + self.attention_out(attended.flatten(-2))
        x = self.ffn_norm(x)
        return x + self.ffn(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded x (B, L, d) -> (output, k, v); k and v are what later candidates attend to."""
        queries, q, k, v = self.project(x)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.finish(queries, attended.transpose(1, 2)), k, v

    def attend_candidates(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        history_k: torch.Tensor,
        history_v: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """Candidates' q, k, v (B, C, h, d) after padded histories (B, W, h, d) -> (B, C, h, d).

        Candidate c of user b is the last token of history b + [c]: one softmax over the
        visible history and the candidate itself, the two parts computed apart.
        """
        scale = q.shape[-1] ** -0.5
        history_scores = torch.einsum("bchd,bwhd->bhcw", q, history_k) * scale
        history_scores = history_scores.masked_fill(~visible[:, None, None, :], -torch.inf)
        own_scores = (q * k).sum(-1).transpose(1, 2)[..., None] * scale  # (B, h, C, 1)
        weights = torch.softmax(torch.cat([history_scores, own_scores], dim=-1), dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        history_weights, own_weight = weights.split([history_k.shape[1], 1], dim=-1)
        attended = torch.einsum("bhcw,bwhd->bchd", history_weights, history_v)
        return attended + own_weight.squeeze(-1).transpose(1, 2)[..., None] * v


class SASRecEncoder(nn.Module):
    # Causal softmax attention: a history is encoded the same whatever follows it.
    history_matches_forward = True

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
        return self.encode_history(x, offsets, None)[0]

    def encode_history(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, HistoryCache]:
        """Jagged histories -> their outputs and the cache that appended candidates attend to."""
        lengths = offsets[1:] - offsets[:-1]
        width = int(lengths.max()) if lengths.numel() else 0
        padded = jagged_to_padded(x, offsets, width)
        keys, values = [], []
        for block in self.blocks:
            padded, k, v = block(padded)
            keys.append(k)
            values.append(v)
        cache = HistoryCache(
            keys=keys,
            values=values,
            lengths=lengths,
            timestamps=None if timestamps is None else jagged_to_padded(timestamps, offsets, width),
        )
        return padded_to_jagged(self.final_norm(padded), offsets), cache

    def attend_candidates(
        self, x: torch.Tensor, history: HistoryCache, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        """Candidate inputs (B, C, d), C per history, -> their outputs (B, C, d)."""
        del timestamps  # SASRec has no time signal
        visible = history.visible
        for block, history_k, history_v in zip(
            self.blocks, history.keys, history.values, strict=True
        ):
            queries, q, k, v = block.project(x)
            x = block.finish(
                queries, block.attend_candidates(q, k, v, history_k, history_v, visible)
            )
        return self.final_norm(x)
