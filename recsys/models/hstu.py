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

Target-aware candidates (``encode_history`` once, then ``attend_candidates``):
a candidate is one more token after the history, seeing the history and itself;
the blocks' ``project`` and ``finish`` are shared by both paths, so only the
attention differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import hstu_attention, jagged_to_padded
from kernels.hstu.common import time_buckets

from .history import HistoryCache

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
        self.dropout = dropout
        width = num_heads * (2 * linear_dim + 2 * attention_dim)
        # No bias in the fused projection, as in the reference implementation.
        self.uvqk = nn.Parameter(torch.empty(dim, width).normal_(0, 0.02))
        self.output = nn.Linear(num_heads * linear_dim, dim)
        nn.init.xavier_uniform_(self.output.weight)
        self.bias = RelativeBias(max_seq_len, num_time_buckets, use_time_bias, use_position_bias)

    def project(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., d) -> u (..., h * dv) and v, q, k split by head: (..., h, dv | dqk)."""
        h, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        projected = F.silu(F.layer_norm(x, (x.shape[-1],), eps=_LN_EPS) @ self.uvqk)
        u, v, q, k = projected.split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        return u, v.unflatten(-1, (h, dv)), q.unflatten(-1, (h, dqk)), k.unflatten(-1, (h, dqk))

    def finish(self, x: torch.Tensor, attended: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Attention output (..., h, dv) -> gated by u, projected back, added to the residual x."""
        gated = F.layer_norm(attended.flatten(-2), (u.shape[-1],), eps=_LN_EPS) * u
        return x + self.output(F.dropout(gated, self.dropout, self.training))

    def forward(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor,
        timestamps: torch.Tensor | None,
        normalizer: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Jagged x (total, d) -> (output, k, v); k and v are what later candidates attend to."""
        u, v, q, k = self.project(x)
        use_time = self.bias.time is not None and timestamps is not None
        attended = hstu_attention(
            q,
            k,
            v,
            offsets,
            self.max_seq_len,
            alpha=self.alpha,
            causal=True,
            position_bias=self.bias.position,
            time_bias=self.bias.time if use_time else None,
            timestamps=timestamps if use_time else None,
            normalizer=normalizer,
            impl=self.attention_impl,
        )
        return self.finish(x, attended, u), k, v

    def attend_candidates(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        history_k: torch.Tensor,
        history_v: torch.Tensor,
        visible: torch.Tensor,
        normalizer: torch.Tensor,
        relative: torch.Tensor,
        buckets: torch.Tensor | None,
    ) -> torch.Tensor:
        """Candidates' q, k, v (B, C, h, d) after padded histories (B, W, h, d) -> (B, C, h, dv).

        Candidate c of user b is the last token of history b + [c]: the terms hstu_attention
        gives it on that sequence, with the history part and the self part computed apart.
        ``visible`` (B, W): real history tokens; ``normalizer`` (B,): n; ``relative`` (B, W):
        position-bias index of each history token seen from the candidate; ``buckets``
        (B, W): its time-gap bucket, None without time bias.
        """
        history_bias, self_bias = 0.0, 0.0
        if self.bias.position is not None:
            history_bias = self.bias.position[relative][:, None, None, :]
            self_bias = self.bias.position[self.max_seq_len - 1]  # gap 0
        if buckets is not None:
            history_bias = history_bias + self.bias.time[buckets][:, None, None, :]
            self_bias = self_bias + self.bias.time[0]  # bucket of a zero time gap
        normalizer = normalizer.to(q.dtype)
        scores = self.alpha * torch.einsum("bchd,bwhd->bhcw", q, history_k) + history_bias
        weights = F.silu(scores) * (visible / normalizer[:, None])[:, None, None, :]
        own = F.silu(self.alpha * (q * k).sum(-1) + self_bias) / normalizer[:, None, None]
        return torch.einsum("bhcw,bwhd->bchd", weights, history_v) + own[..., None] * v


class HSTUEncoder(nn.Module):
    """Stack of HSTU blocks over jagged sequences; returns L2-normalised states."""

    def __init__(self, config, max_seq_len: int):
        super().__init__()
        dim = config.embedding_dim
        self.max_seq_len = max_seq_len
        self.normalizer = config.hstu_normalizer
        self.use_time_bias = config.time_bias
        self.blocks = nn.ModuleList(
            HSTUBlock(
                dim=dim,
                num_heads=config.num_heads,
                attention_dim=config.attention_dim or dim // config.num_heads,
                linear_dim=config.linear_dim or dim // config.num_heads,
                max_seq_len=max_seq_len,
                dropout=config.dropout,
                alpha=config.hstu_alpha,
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
        lengths = offsets[1:] - offsets[:-1]
        normalizer = lengths.clamp(min=1) if self.normalizer == "length" else None
        return self._run(x, offsets, timestamps, normalizer)[0]

    def _run(self, x, offsets, timestamps, normalizer):
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x, offsets, timestamps, normalizer)
            keys.append(k)
            values.append(v)
        return x, keys, values

    @property
    def history_matches_forward(self) -> bool:
        """Whether encode_history's output equals forward's (not with the "length" normaliser)."""
        return self.normalizer != "length"

    def encode_history(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None
    ) -> tuple[torch.Tensor, HistoryCache]:
        """Jagged histories -> their outputs and the cache that appended candidates attend to.

        Encoded as the first L tokens of the (L + 1)-long sequences a candidate completes:
        with the "length" normaliser every token is divided by L + 1, not L.
        """
        lengths = offsets[1:] - offsets[:-1]
        length_normalizer = self.normalizer == "length"
        normalizer = (
            lengths + 1 if length_normalizer else torch.full_like(lengths, self.max_seq_len)
        )
        out, keys, values = self._run(
            x, offsets, timestamps, normalizer if length_normalizer else None
        )
        width = int(lengths.max()) if lengths.numel() else 0
        padded = [jagged_to_padded(t, offsets, width) for t in keys + values]
        cache = HistoryCache(
            keys=padded[: len(keys)],
            values=padded[len(keys) :],
            lengths=lengths,
            timestamps=None if timestamps is None else jagged_to_padded(timestamps, offsets, width),
            normalizer=normalizer,
        )
        return out, cache

    def attend_candidates(
        self, x: torch.Tensor, history: HistoryCache, timestamps: torch.Tensor | None
    ) -> torch.Tensor:
        """Candidate inputs (B, C, d), C per history, -> their outputs (B, C, d).

        ``timestamps`` (B,): the candidates' time, used with the time bias when the
        history has times too.
        """
        n = self.max_seq_len
        position = history.lengths.clamp(max=n - 1)
        columns = torch.arange(history.keys[0].shape[1], device=x.device)
        relative = columns[None, :] - position[:, None] + n - 1  # j - i + N - 1, as the kernel
        buckets = None
        if self.use_time_bias and history.timestamps is not None and timestamps is not None:
            gaps = timestamps[:, None] - history.timestamps
            buckets = time_buckets(gaps, self.blocks[0].bias.time.numel())
        visible = history.visible
        for block, history_k, history_v in zip(
            self.blocks, history.keys, history.values, strict=True
        ):
            u, v, q, k = block.project(x)
            attended = block.attend_candidates(
                q, k, v, history_k, history_v, visible, history.normalizer, relative, buckets
            )
            x = block.finish(x, attended, u)
        return x
