"""Non-learned scorers every model must beat."""

from __future__ import annotations

import numpy as np
import torch

from .data.splits import SequenceExamples


def popularity_scores(train: SequenceExamples, num_item_ids: int) -> torch.Tensor:
    """How often each item id occurs in the training sequences (id 0 stays 0)."""
    counts = np.bincount(train.item_ids.values, minlength=num_item_ids)[:num_item_ids]
    return torch.from_numpy(counts.astype(np.float32))
