"""Datasets as Parquet, leave-one-out splits and jagged batches.

    from recsys.data import prepare_dataset, load_sequences, leave_one_out, SequenceLoader
    prepare_dataset("synthetic", "data/synthetic")
    split = leave_one_out(load_sequences("data/synthetic"), max_len=200)
    for batch in SequenceLoader(split.train, 128, shuffle=True, seed=0):
        batch.features()  # KeyedJaggedTensor for an EmbeddingCollection

``SequenceLoader`` (and TorchRec) is imported lazily so that preparing data
does not pay for importing torch.
"""

from .errors import DataError
from .jagged_array import JaggedArray
from .prepare import ensure_prepared, prepare_dataset
from .registry import DATASETS
from .splits import LeaveOneOutSplit, RetrainSplit, SequenceExamples, leave_one_out, retrain_split
from .store import SequenceData, load_items, load_manifest, load_sequences, load_users

__all__ = [
    "DATASETS",
    "DataError",
    "JaggedArray",
    "LeaveOneOutSplit",
    "RetrainSplit",
    "SequenceBatch",
    "SequenceData",
    "SequenceExamples",
    "SequenceLoader",
    "ensure_prepared",
    "leave_one_out",
    "load_items",
    "load_manifest",
    "load_sequences",
    "load_users",
    "prepare_dataset",
    "retrain_split",
]


def __getattr__(name: str):
    if name in ("SequenceBatch", "SequenceLoader"):
        from . import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
