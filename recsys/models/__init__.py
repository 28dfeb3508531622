"""Sequence models. Each is a plain ``nn.Module``: no Ray, no MLflow."""

from .embeddings import ITEM_FEATURE, ITEM_TABLE, ItemEmbeddings
from .sequential import SequentialRecommender

__all__ = ["ITEM_FEATURE", "ITEM_TABLE", "ItemEmbeddings", "SequentialRecommender"]
