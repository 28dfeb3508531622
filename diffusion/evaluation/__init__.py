"""Offline sample-quality evaluation: a Fashion-MNIST classifier as feature extractor,
FID / KID / conditional accuracy, cached reference statistics and the real-vs-real floor.

Train the classifier once (``python -m diffusion.evaluation.train_classifier``), then::

    classifier = load_classifier("runs/fmnist-classifier")
    train_images, _ = load_fashion_mnist(DATA, "train")
    reference = reference_statistics(classifier, train_images, "fashion-mnist/train",
                                     cache_dir="runs/fmnist-classifier")
    scores = evaluate_samples(samples, requested_labels, reference, classifier)
"""

from .classifier import (
    ClassifierConfig,
    ImageClassifier,
    crop_to_classifier_size,
    extract,
    load_classifier,
    save_classifier,
)
from .evaluate import ReferenceStatistics, evaluate_samples, floor, reference_statistics
from .metrics import (
    conditional_accuracy,
    fid_from_features,
    frechet_distance,
    gaussian_statistics,
    kernel_inception_distance,
    sqrtm_psd,
    trace_sqrt_product,
)

__all__ = [
    "ClassifierConfig",
    "ImageClassifier",
    "ReferenceStatistics",
    "conditional_accuracy",
    "crop_to_classifier_size",
    "evaluate_samples",
    "extract",
    "fid_from_features",
    "floor",
    "frechet_distance",
    "gaussian_statistics",
    "kernel_inception_distance",
    "load_classifier",
    "reference_statistics",
    "save_classifier",
    "sqrtm_psd",
    "trace_sqrt_product",
]
