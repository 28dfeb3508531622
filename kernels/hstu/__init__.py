"""HSTU pointwise attention on jagged sequences: one function, three implementations.

    hstu_attention(q, k, v, offsets, max_seq_len, *, alpha, causal=True,
                   position_bias=None, time_bias=None, timestamps=None,
                   num_targets=None, contextual_len=0, normalizer=None, impl="auto")

Inputs are jagged: q, k (total_tokens, heads, attn_dim), v (total_tokens, heads, value_dim),
sequence b is rows offsets[b]:offsets[b + 1] (int64 offsets of length batch + 1), and
every length is at most max_seq_len. The output is (total_tokens, heads, value_dim) in
q's dtype; every implementation accumulates in fp32 (fp64 for fp64 inputs).

For positions i, j (0-based, within one sequence):

    score(i, j)  = alpha * <q_i, k_j> + rab(i, j)
    weight(i, j) = SiLU(score(i, j)) / n      # no softmax
    out_i        = sum_j mask(i, j) * weight(i, j) * v_j

- n is ``normalizer`` (a number, or a (batch,) tensor such as the true lengths), else max_seq_len.
- rab(i, j) = position_bias[j - i + max_seq_len - 1]            (1-D, 2 * max_seq_len - 1)
            + time_bias[bucket(ts_i - ts_j)]                     (1-D, any length)
  with bucket(d) = clamp(floor(log(max(|d|, 1)) / 0.301), 0, len(time_bias) - 1) in fp32,
  ``timestamps`` a jagged int64 (total_tokens,) tensor. Both biases are optional, shared by
  all heads, and receive gradients.
- mask(i, j): j <= i when causal, any j of the sequence otherwise; then
  * the last num_targets[b] tokens are candidates: a candidate sees every non-candidate
    (they all precede it) and itself, never another candidate; no non-candidate sees a
    candidate;
  * the first contextual_len tokens see, and are seen by, every non-candidate token of the
    sequence (candidates see them anyway).

Implementations (``impl=``): "reference" (padded PyTorch, the ground truth), "cpu" (length
buckets of padded attention with a hand-written backward: the fast path on CPUs), "triton"
(fused forward and backward kernels on jagged rows; runs on CPU tensors only under
TRITON_INTERPRET=1) and "auto": triton for CUDA tensors when Triton imports, else cpu.
"""

from __future__ import annotations

import importlib.util

import torch

from .reference import hstu_attention_reference

IMPLEMENTATIONS = ("auto", "reference", "cpu", "triton")


def triton_available() -> bool:
    """True when Triton is installed; it is imported only when a kernel is first used."""
    return importlib.util.find_spec("triton") is not None


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float,
    causal: bool = True,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    num_targets: torch.Tensor | None = None,
    contextual_len: int = 0,
    normalizer: float | torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """HSTU attention on jagged sequences; see the module docstring for the exact semantics."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "auto":
        impl = "triton" if q.is_cuda and triton_available() else "cpu"
    if impl == "reference":
        fn = hstu_attention_reference
    elif impl == "cpu":
        from .cpu import hstu_attention_cpu as fn
    else:
        # Imported here so that `import kernels` never imports triton.
        from .triton_kernels import hstu_attention_triton as fn
    return fn(
        q,
        k,
        v,
        offsets,
        max_seq_len,
        alpha=alpha,
        causal=causal,
        position_bias=position_bias,
        time_bias=time_bias,
        timestamps=timestamps,
        num_targets=num_targets,
        contextual_len=contextual_len,
        normalizer=normalizer,
    )


__all__ = ["IMPLEMENTATIONS", "hstu_attention", "hstu_attention_reference", "triton_available"]
