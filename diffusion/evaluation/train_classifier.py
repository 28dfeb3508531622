"""Train the evaluation classifier on Fashion-MNIST train images.

    python -m diffusion.evaluation.train_classifier --data ../shared/data/fashion-mnist \\
        --out runs/fmnist-classifier [--epochs 15]

Only the train split is used for fitting and for choosing the epoch: a seeded random
``--val-size`` images of it are held out for early stopping. The test split is read once,
after training, to report the accuracy of the kept weights. Writes ``model.safetensors``
and ``classifier.json`` (config, weights digest, accuracies, epochs, seed, time) to
``--out``. The weights always come from this script; nothing is downloaded but the data
(when ``--data`` is omitted).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data import DataError, load_fashion_mnist, to_model_range
from .classifier import ClassifierConfig, ImageClassifier, extract, save_classifier
from .metrics import conditional_accuracy


def accuracy_of(classifier: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, logits = extract(classifier, images)
    return conditional_accuracy(logits, labels)


def fit_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    config: ClassifierConfig | None = None,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 3e-3,
    patience: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ImageClassifier, dict]:
    """Train on uint8 (N, 28, 28) images; keep the weights of the best validation epoch.

    AdamW with a cosine learning-rate decay over ``epochs``; training stops early when
    validation accuracy has not improved for ``patience`` epochs. Returns the classifier
    (eval mode) and a record of the run (best epoch, its validation accuracy, epochs run).
    """
    torch.manual_seed(seed)
    classifier = ImageClassifier(config)
    x_train = to_model_range(train_images)
    y_train = train_labels.to(torch.int64)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    best = {"val_accuracy": -1.0, "best_epoch": 0}
    best_state = None
    epochs_run = 0
    for epoch in range(1, epochs + 1):
        classifier.train()
        permutation = torch.randperm(len(x_train), generator=order)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            index = permutation[step * batch_size : (step + 1) * batch_size]
            loss = loss_fn(classifier(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        epochs_run = epoch
        val_accuracy = accuracy_of(classifier, val_images, val_labels)
        if progress:
            tqdm.write(f"epoch {epoch}: val accuracy {val_accuracy:.4f}")
        if val_accuracy > best["val_accuracy"]:
            best = {"val_accuracy": val_accuracy, "best_epoch": epoch}
            best_state = copy.deepcopy(classifier.state_dict())
        elif epoch - best["best_epoch"] >= patience:
            break
    classifier.load_state_dict(best_state)
    return classifier.eval(), {**best, "epochs_run": epochs_run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="Fashion-MNIST folder (default: download)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--epochs", type=int, default=15, help="at most this many epochs")
    parser.add_argument("--patience", type=int, default=3, help="early stopping, in epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-size", type=int, default=5000, help="train images held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        images, labels = load_fashion_mnist(args.data, "train")
        test_images, test_labels = load_fashion_mnist(args.data, "test")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    val, train = split[: args.val_size], split[args.val_size :]
    classifier, record = fit_classifier(
        images[train],
        labels[train],
        images[val],
        labels[val],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
    )
    train_seconds = time.perf_counter() - started
    test_accuracy = accuracy_of(classifier, test_images, test_labels)
    info = {
        "dataset": "fashion-mnist",
        "test_accuracy": test_accuracy,
        **record,
        "max_epochs": args.epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_size": len(train),
        "val_size": len(val),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    save_classifier(classifier, args.out, info)
    print(
        f"test accuracy {test_accuracy:.4f} (val {record['val_accuracy']:.4f}, best epoch "
        f"{record['best_epoch']} of {record['epochs_run']}), {train_seconds:.0f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
