"""Overrides for tiny pipeline runs: a few hundred users, 2 workers, seconds per epoch on 2 cores."""

TINY = [
    "data.options={num_users: 400, num_items: 120, mean_length: 12}",
    "data.max_len=20",
    "model.embedding_dim=16",
    "train.batch_size=32",
    "train.num_negatives=32",
    "eval.batch_size=256",
    "pipeline.num_workers=2",
    "pipeline.log_every_steps=2",
]
