"""Jagged-tensor ops and fused attention kernels, each beside a PyTorch reference.

Imports need torch only; Triton kernels are optional and loaded where used.
"""

from .jagged import jagged_to_padded, lengths_to_offsets, offsets_to_lengths, padded_to_jagged

__all__ = ["jagged_to_padded", "lengths_to_offsets", "offsets_to_lengths", "padded_to_jagged"]
