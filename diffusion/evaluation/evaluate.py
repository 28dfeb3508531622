"""Scoring generated images against a cached reference, and the real-vs-real floor.

The reference is what samples are compared with: the Gaussian fit (mean, covariance) of
the classifier features of a real split, plus a random subset of those features for KID.
It is computed once per (split, classifier) and cached, so evaluating many checkpoints
costs only the features of the samples. The usual protocol compares samples with the
split the generator was trained on (Fashion-MNIST train).

``floor`` answers "how good is good": it scores real held-out images (the test split,
which no generator or classifier was trained on) against the same reference, at the same
sample count, so every model number can be reported beside the value a perfect generator
would get. FID in particular depends on the count: never compare across counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .classifier import ImageClassifier, extract
from .metrics import (
    conditional_accuracy,
    frechet_distance,
    gaussian_statistics,
    kernel_inception_distance,
)


@dataclass(frozen=True)
class ReferenceStatistics:
    """Feature statistics of a real image set under one classifier."""

    name: str  # what the images are, e.g. "fashion-mnist/train"
    mean: np.ndarray  # (D,)
    cov: np.ndarray  # (D, D)
    features: np.ndarray  # (M, D) random subset of the features, for KID
    count: int  # images the Gaussian was fitted on
    classifier_digest: str
    images_digest: str

    def save(self, path: str | Path) -> None:
        tensors = {
            "mean": torch.from_numpy(self.mean),
            "cov": torch.from_numpy(self.cov),
            "features": torch.from_numpy(self.features),
        }
        metadata = {
            "name": self.name,
            "count": str(self.count),
            "classifier_digest": self.classifier_digest,
            "images_digest": self.images_digest,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStatistics:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        return cls(
            name=metadata["name"],
            mean=tensors["mean"].numpy(),
            cov=tensors["cov"].numpy(),
            features=tensors["features"].numpy(),
            count=int(metadata["count"]),
            classifier_digest=metadata["classifier_digest"],
            images_digest=metadata["images_digest"],
        )


def images_digest(images: torch.Tensor) -> str:
    """Short sha256 of an image tensor's dtype, shape and bytes (the cache key's data part)."""
    digest = hashlib.sha256(f"{images.dtype}{tuple(images.shape)}".encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def reference_statistics(
    classifier: ImageClassifier,
    images: torch.Tensor,
    name: str,
    cache_dir: str | Path | None = None,
    max_kid_features: int = 10_000,
    seed: int = 0,
) -> ReferenceStatistics:
    """Statistics of real ``images`` (uint8 (N, H, W) or float (N, 1, H, W) in [-1, 1]).

    With ``cache_dir`` the result is stored as
    ``<cache_dir>/reference-<name>-<classifier digest>-<images digest>.safetensors`` and
    loaded from there next time; other classifier weights or images get another file.
    """
    key = (classifier.digest(), images_digest(images))
    path = None
    if cache_dir is not None:
        safe_name = name.replace("/", "-")
        path = Path(cache_dir) / f"reference-{safe_name}-{key[0]}-{key[1]}.safetensors"
        if path.is_file():
            return ReferenceStatistics.load(path)
    features, _ = extract(classifier, images)
    mean, cov = gaussian_statistics(features)
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(features), min(max_kid_features, len(features)), replace=False)
    reference = ReferenceStatistics(
        name=name,
        mean=mean,
        cov=cov,
        features=features.numpy()[np.sort(keep)],
        count=len(features),
        classifier_digest=key[0],
        images_digest=key[1],
    )
    if path is not None:
        reference.save(path)
    return reference


def evaluate_samples(
    images: torch.Tensor,
    requested_labels: torch.Tensor | None,
    reference: ReferenceStatistics,
    classifier: ImageClassifier,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID, KID (mean and std) and conditional accuracy of generated ``images``.

    ``images``: float (N, 1, 28|32, 28|32) in [-1, 1] (32x32 is center-cropped, see
    ``classifier``), or uint8 (N, H, W). ``requested_labels``: the class each sample was
    generated for, or None for an unconditional model (accuracy is then None).
    """
    if reference.classifier_digest != classifier.digest():
        raise ValueError(
            f"reference {reference.name!r} was computed with classifier "
            f"{reference.classifier_digest}, not with this one ({classifier.digest()}); "
            "recompute it with reference_statistics"
        )
    features, logits = extract(classifier, images)
    kid, kid_std = kernel_inception_distance(
        features, reference.features, kid_subsets, kid_subset_size, seed
    )
    accuracy = None
    if requested_labels is not None:
        accuracy = conditional_accuracy(logits, requested_labels)
    return {
        "fid": frechet_distance(*gaussian_statistics(features), reference.mean, reference.cov),
        "kid": kid,
        "kid_std": kid_std,
        "accuracy": accuracy,
        "num_samples": len(images),
        "reference": reference.name,
    }


def floor(
    classifier: ImageClassifier,
    reference: ReferenceStatistics,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    num_samples: int | None = None,
    seed: int = 0,
    **kwargs,
) -> dict:
    """``evaluate_samples`` for ``num_samples`` real held-out images (a seeded random subset
    of ``real_images``, all of them when None) with their true labels: the best FID/KID a
    model can expect at that sample count, and the accuracy of the classifier itself."""
    count = len(real_images) if num_samples is None else num_samples
    if count > len(real_images):
        raise ValueError(f"asked for {count} real images, only {len(real_images)} available")
    pick = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(seed))[:count]
    return evaluate_samples(
        real_images[pick], real_labels[pick], reference, classifier, seed=seed, **kwargs
    )
