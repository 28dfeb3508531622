"""Training throughput of HSTU and SASRec, side by side in one run.

    python benchmarks/recsys_speed.py                          # Beauty and ML-1M, writes docs/benchmarks.md
    python benchmarks/recsys_speed.py --datasets amazon-beauty --rounds 3

Every variant trains the same data with the same sampled-softmax loss; only
the encoder, the attention implementation and the batching differ. Variants
run in interleaved rounds (a few steps each, in turn) so that a noisy machine
slows them all alike; the table reports the median over rounds. The padded
fraction is the share of a per-batch padded (B, longest) view that would be
padding: what a padded implementation pays for and the jagged one does not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.recsys_quality import _git, machine, write_section
from recsys.config import load_config
from recsys.data import SequenceLoader, ensure_prepared, leave_one_out, load_sequences
from recsys.experiment import ExperimentConfig
from recsys.losses import NegativeSampler
from recsys.train import build_model

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- recsys-speed:begin -->", "<!-- recsys-speed:end -->"

VARIANTS = [  # name, family, attention implementation, length bucketing
    ("HSTU, jagged CPU attention, bucketed", "hstu", "cpu", True),
    ("HSTU, jagged CPU attention", "hstu", "cpu", False),
    ("HSTU, padded reference attention", "hstu", "reference", False),
    ("SASRec, bucketed", "sasrec", None, True),
    ("SASRec", "sasrec", None, False),
]
DATASETS = {"amazon-beauty": 50, "ml-1m": 200}  # dataset -> max_len


class Variant:
    def __init__(
        self,
        name,
        family,
        impl,
        bucketed,
        dataset,
        max_len,
        split,
        num_item_ids,
        candidates,
        batch_size,
    ):
        overrides = [
            f"data.dataset={dataset}",
            f"data.max_len={max_len}",
            f"model.family={family}",
            "model.embedding_dim=64",
            "train.num_negatives=256",
            "train.shared_negatives=true",
        ]
        if impl:
            overrides.append(f"model.attention_impl={impl}")
        config = load_config(ExperimentConfig, None, overrides)
        self.name = name
        self.model = build_model(config, num_item_ids).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.sampler = NegativeSampler(candidates, seed=0)
        self.loader = SequenceLoader(
            split.train, batch_size, shuffle=True, seed=0, bucket_by_length=bucketed
        )
        self.batches = iter(self.loader)
        self.use_time = family == "hstu"
        self.rounds: list[tuple[float, int, int]] = []
        self.padded: list[float] = []

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.loader.set_epoch(self.loader.epoch + 1)
            self.batches = iter(self.loader)
            return next(self.batches)

    def steps(self, count: int, record: bool) -> None:
        started, sequences, tokens = time.perf_counter(), 0, 0
        for _ in range(count):
            batch = self._next()
            times = (
                batch.timestamps.values()
                if (self.use_time and batch.timestamps is not None)
                else None
            )
            loss = self.model(
                batch.item_ids.values(),
                batch.item_ids.offsets(),
                times,
                self.sampler.sample((256,)),
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sequences += len(batch)
            tokens += batch.num_tokens
            self.padded.append(batch.padded_fraction)
        if record:
            self.rounds.append((time.perf_counter() - started, sequences, tokens))

    def summary(self) -> tuple[float, float, float]:
        seq_rates = [s / t for t, s, _ in self.rounds]
        tok_rates = [k / t for t, _, k in self.rounds]
        return (
            statistics.median(seq_rates),
            statistics.median(tok_rates),
            statistics.mean(self.padded),
        )


def bench_dataset(
    dataset: str, max_len: int, rounds: int, steps: int, batch_size: int
) -> list[str]:
    folder = ROOT / "runs" / "data" / dataset
    ensure_prepared(dataset, folder)
    data = load_sequences(folder)
    split = leave_one_out(data, max_len=max_len)
    candidates = torch.from_numpy(np.unique(data.item_ids.values))
    variants = [
        Variant(*v, dataset, max_len, split, data.num_item_ids, candidates, batch_size)
        for v in VARIANTS
    ]
    for variant in variants:  # warm-up
        variant.steps(2, record=False)
    for round_index in range(rounds):
        for variant in variants:
            variant.steps(steps, record=True)
        print(f"[speed] {dataset}: round {round_index + 1}/{rounds}", flush=True)
    base = next(v for v in variants if "reference" in v.name).summary()[1]
    lengths = split.train.item_ids.lengths
    lines = [
        f"**{dataset}** (train sequences {len(split.train):,}, length mean {lengths.mean():.1f}, max {lengths.max()}; "
        f"max_len {max_len}, batch {batch_size}, d=64, 2 blocks, 256 shared negatives)",
        "",
        "| variant | sequences/s | tokens/s | vs padded HSTU | mean padded fraction per batch |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        seq_rate, tok_rate, padded = variant.summary()
        lines.append(
            f"| {variant.name} | {seq_rate:,.0f} | {tok_rate:,.0f} | {tok_rate / base:.2f}x | {padded:.1%} |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    os.environ.setdefault("GENREC_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    body = [
        f"Command: `python benchmarks/recsys_speed.py --datasets {' '.join(args.datasets)} --rounds {args.rounds} "
        f"--steps {args.steps}`  ",
        f"Machine: {machine()}, {torch.get_num_threads()} threads  ",
        f"Date: {dt.date.today()}  ",
        f"Commit: {_git('rev-parse', '--short', 'HEAD')}",
        "",
    ]
    for dataset in args.datasets:
        body += bench_dataset(dataset, DATASETS[dataset], args.rounds, args.steps, args.batch_size)
    text = "\n".join(body)
    print(text)
    write_section(args.doc, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
