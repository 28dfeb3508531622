"""FID, KID and conditional accuracy against closed forms and hand-made cases, and the
classifier they run on (a short training on a subset: the whole file runs in well under
a minute on 2 cores)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from diffusion.data import load_fashion_mnist, synthetic_images, to_model_range
from diffusion.evaluation import (
    ImageClassifier,
    ReferenceStatistics,
    conditional_accuracy,
    evaluate_samples,
    extract,
    fid_from_features,
    floor,
    frechet_distance,
    kernel_inception_distance,
    load_classifier,
    reference_statistics,
    save_classifier,
    sqrtm_psd,
    trace_sqrt_product,
)
from diffusion.evaluation.metrics import _unbiased_mmd2
from diffusion.evaluation.train_classifier import accuracy_of, fit_classifier

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
METHODS = [
    "eigen",
    pytest.param("scipy", marks=pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed")),
]


def _random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q


# --- FID ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_fid_of_a_set_with_itself_is_zero(method):
    features = np.random.default_rng(0).standard_normal((500, 32)) * 3 + 1
    assert fid_from_features(features, features, method) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_matches_closed_form(method):
    """Covariances sharing eigenvectors: tr((C1 C2)^1/2) = sum sqrt(l1 l2), so
    FID = |mu1 - mu2|^2 + sum (sqrt l1 - sqrt l2)^2 (non-diagonal matrices all the same)."""
    rng = np.random.default_rng(1)
    dim = 8
    q = _random_orthogonal(dim, rng)
    l1, l2 = rng.uniform(0.5, 3, dim), rng.uniform(0.1, 4, dim)
    cov1, cov2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu1, cov1, mu2, cov2, method) == pytest.approx(closed, rel=1e-9)

    # and from samples of the two Gaussians (the finite-sample bias is small at this size)
    x = rng.multivariate_normal(mu1, cov1, 100_000)
    y = rng.multivariate_normal(mu2, cov2, 100_000)
    assert fid_from_features(x, y, method) == pytest.approx(closed, rel=0.02)


def test_one_dimensional_case():
    # N(0, 4) vs N(3, 1): 3^2 + (2 - 1)^2
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10.0)


def test_sqrtm_methods_agree():
    pytest.importorskip("scipy")
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(2)
    for rows, dim in [(200, 16), (10, 16)]:  # full rank, and rank 9 (fewer samples than dims)
        a = np.cov(rng.standard_normal((rows, dim)) @ rng.standard_normal((dim, dim)), rowvar=False)
        b = np.cov(rng.standard_normal((rows, dim)) * rng.uniform(0.1, 2, dim), rowvar=False)
        root = sqrtm_psd(a)
        np.testing.assert_allclose(root @ root, a, atol=1e-8)
        if rows > dim:
            np.testing.assert_allclose(root, np.real(sqrtm(a)), atol=1e-6)
        assert trace_sqrt_product(a, b, "eigen") == pytest.approx(
            trace_sqrt_product(a, b, "scipy"), rel=1e-5
        )


# --- KID ---------------------------------------------------------------------------------


def test_unbiased_mmd_matches_its_definition():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert _unbiased_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy)


def test_kid_is_unbiased_and_detects_a_shift():
    rng = np.random.default_rng(4)
    # Unbiased: over many independent pairs of tiny samples of one distribution the mean
    # is 0 (a biased estimate would be clearly positive at this size).
    values = [
        _unbiased_mmd2(rng.standard_normal((10, 4)), rng.standard_normal((10, 4)))
        for _ in range(2_000)
    ]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))

    x, y = rng.standard_normal((2_000, 16)), rng.standard_normal((2_000, 16))
    same, same_std = kernel_inception_distance(x, y, num_subsets=50, subset_size=500)
    shifted, shifted_std = kernel_inception_distance(x, y + 0.5, num_subsets=50, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 100 * abs(same) and shifted > 5 * shifted_std
    assert kernel_inception_distance(x, y, 10, 500, seed=1) == kernel_inception_distance(
        x, y, 10, 500, seed=1
    )


# --- accuracy ----------------------------------------------------------------------------


def test_conditional_accuracy_hand_made():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]])
    requested = torch.tensor([0, 1, 1, 0])  # third sample was asked for class 1, looks like 2
    assert conditional_accuracy(logits, requested) == 0.75
    assert conditional_accuracy(torch.tensor([2, 2]), torch.tensor([2, 0])) == 0.5
    with pytest.raises(ValueError, match="as many"):
        conditional_accuracy(torch.tensor([1, 2]), torch.tensor([1]))


# --- classifier and the evaluation entry points --------------------------------------------


def test_classifier_on_synthetic_shapes(tmp_path):
    """Runs without the dataset: the classifier learns synthetic shapes, samples of the
    right distribution score better than noise, and 32x32 input equals its 28x28 crop."""
    images, labels = synthetic_images(1_200, seed=0)
    classifier, record = fit_classifier(
        images[:1_000],
        labels[:1_000],
        images[1_000:],
        labels[1_000:],
        epochs=2,
        batch_size=32,
        progress=False,
    )
    assert record["val_accuracy"] > 0.9

    reference = reference_statistics(classifier, images[:1_000], "synthetic", cache_dir=tmp_path)
    held_out, held_labels = synthetic_images(300, seed=1)
    real = evaluate_samples(to_model_range(held_out), held_labels, reference, classifier)
    padded = evaluate_samples(to_model_range(held_out, 32), held_labels, reference, classifier)
    noise = evaluate_samples(torch.rand(300, 1, 28, 28) * 2 - 1, held_labels, reference, classifier)
    assert real["accuracy"] > 0.9 and real["fid"] < noise["fid"] / 5
    assert padded["fid"] == pytest.approx(real["fid"]) and padded["kid"] == pytest.approx(
        real["kid"]
    )
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        classifier.features(torch.zeros(1, 1, 30, 30))

    # the cache: same classifier and images -> the stored file; another classifier -> refused
    cached = reference_statistics(classifier, images[:1_000], "synthetic", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("reference-synthetic-*.safetensors"))) == 1
    np.testing.assert_array_equal(cached.cov, reference.cov)
    with pytest.raises(ValueError, match="recompute"):
        evaluate_samples(held_out, held_labels, reference, ImageClassifier())

    # saved weights reload to the same features
    save_classifier(classifier, tmp_path / "clf", {"test_accuracy": real["accuracy"]})
    reloaded = load_classifier(tmp_path / "clf")
    assert reloaded.digest() == classifier.digest()
    torch.testing.assert_close(extract(reloaded, held_out)[0], extract(classifier, held_out)[0])


@pytest.mark.shared_data
def test_short_trained_classifier_separates_real_from_noise(shared):
    folder = shared("fashion-mnist")
    train_images, train_labels = load_fashion_mnist(folder, "train")
    test_images, test_labels = load_fashion_mnist(folder, "test")
    classifier, _ = fit_classifier(
        train_images[:3_000],
        train_labels[:3_000],
        train_images[-1_000:],
        train_labels[-1_000:],
        epochs=2,
        batch_size=64,
        progress=False,
    )
    assert accuracy_of(classifier, test_images[:2_000], test_labels[:2_000]) > 0.65

    reference = reference_statistics(classifier, train_images[:5_000], "fashion-mnist/train")
    assert isinstance(reference, ReferenceStatistics) and reference.count == 5_000
    real = floor(classifier, reference, test_images, test_labels, num_samples=1_000)
    noise = evaluate_samples(
        torch.rand(1_000, 1, 28, 28) * 2 - 1, test_labels[:1_000], reference, classifier
    )
    assert real["num_samples"] == 1_000 and real["accuracy"] > 0.65
    assert real["fid"] < noise["fid"] / 10
    assert real["kid"] < 3 * real["kid_std"] + 1e-3 < noise["kid"]
    assert noise["accuracy"] < 0.5
