"""Cache the train-split reference of a classifier and compute the real-vs-real floor.

    python -m diffusion.evaluation.compute_floor --data ../shared/data/fashion-mnist \\
        --classifier runs/fmnist-classifier [--num-samples 1000 10000]

The reference (train split features) is cached in the classifier folder, where
``evaluate_samples`` callers find it again; the floor (test images scored against it, at
each sample count) is written to ``floor.json`` there and printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..data import DataError, load_fashion_mnist
from .classifier import load_classifier
from .evaluate import floor, reference_statistics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="Fashion-MNIST folder (default: download)"
    )
    parser.add_argument("--classifier", type=Path, required=True, help="train_classifier output")
    parser.add_argument("--num-samples", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        classifier = load_classifier(args.classifier)
        train_images, _ = load_fashion_mnist(args.data, "train")
        test_images, test_labels = load_fashion_mnist(args.data, "test")
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    reference = reference_statistics(
        classifier, train_images, "fashion-mnist/train", cache_dir=args.classifier
    )
    results = {}
    for count in args.num_samples:
        results[str(count)] = floor(
            classifier, reference, test_images, test_labels, num_samples=count, seed=args.seed
        )
        scores = results[str(count)]
        print(
            f"floor, {count} test images vs train: FID {scores['fid']:.3f}  KID "
            f"{scores['kid']:.5f} ± {scores['kid_std']:.5f}  accuracy {scores['accuracy']:.4f}"
        )
    record = {
        "reference": reference.name,
        "classifier_digest": reference.classifier_digest,
        "samples": "fashion-mnist/test",
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "floor": results,
    }
    (args.classifier / "floor.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
