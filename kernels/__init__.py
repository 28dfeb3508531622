"""Jagged-tensor ops and fused attention kernels, each beside a PyTorch reference.

Imports need torch only; Triton kernels are optional and loaded where used.
"""

from .hstu import hstu_attention
from .jagged import jagged_to_padded, lengths_to_offsets, offsets_to_lengths, padded_to_jagged

__all__ = [
    "hstu_attention",
    "jagged_to_padded",
    "lengths_to_offsets",
    "offsets_to_lengths",
    "padded_to_jagged",
]
