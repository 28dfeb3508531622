"""Sample-quality metrics on classifier features: FID, KID and conditional accuracy.

- FID (Heusel et al., 2017): Fréchet distance between Gaussians fitted to the features
  of generated and reference images,
  ``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2))``. It is biased upwards for a
  finite number of samples and the bias shrinks with the count: compare FIDs only at equal
  sample counts (``floor`` computes the real-vs-real value at the same count).
- KID (Bińkowski et al., 2018): unbiased estimate of the squared MMD with the cubic
  polynomial kernel ``k(x, y) = (x·y / d + 1)^3``, averaged over random subsets, reported
  with its standard deviation across subsets. Unbiased: its expectation is 0 for two
  samples of the same distribution, whatever their size, so it can be slightly negative.
- Accuracy: how often the classifier assigns a conditional sample to the class it was
  generated for.

All computations are in float64 numpy; features come from ``classifier.extract``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

SqrtMethod = Literal["auto", "scipy", "eigen"]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N >= 2."""
    features = _numpy(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


# ---------------------------------------------------------------------------
# tr((C1 C2)^(1/2)): the one delicate term of the Fréchet distance
# ---------------------------------------------------------------------------


def sqrtm_psd(matrix) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition.

    Eigenvalues that rounding made slightly negative are clamped to 0, so rank-deficient
    covariances (fewer samples than dimensions, dead ReLU features) are no problem.
    """
    matrix = _numpy(matrix)
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def _has_scipy() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def trace_sqrt_product(cov1, cov2, method: SqrtMethod = "auto") -> float:
    """``tr((cov1 @ cov2)^(1/2))`` for covariance matrices.

    ``"scipy"``: ``scipy.linalg.sqrtm`` of the (non-symmetric) product, as pytorch-fid
    does, with a small diagonal offset when the result is not finite and the real part
    kept. ``"eigen"``: with S = cov1^(1/2), ``cov1 @ cov2`` is similar to the symmetric
    PSD ``S @ cov2 @ S``, so the trace is the sum of the square roots of its eigenvalues
    (clamped at 0); it needs only ``numpy.linalg.eigh`` and is exact for singular
    covariances. ``"auto"``: scipy when installed, else eigen.
    """
    cov1, cov2 = _numpy(cov1), _numpy(cov2)
    if method == "auto":
        method = "scipy" if _has_scipy() else "eigen"
    if method == "eigen":
        root = sqrtm_psd(cov1)
        eigenvalues = np.linalg.eigvalsh(root @ cov2 @ root)
        return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
    if method != "scipy":
        raise ValueError(f"method must be auto, scipy or eigen, got {method!r}")
    from scipy.linalg import LinAlgWarning, sqrtm

    with warnings.catch_warnings():
        # A singular product (dead features, fewer samples than dimensions) warns, yet
        # its root is usually fine; a result that is not is caught by the finite check.
        warnings.simplefilter("ignore", LinAlgWarning)
        product = sqrtm(cov1 @ cov2)
        if not np.isfinite(product).all():
            offset = np.eye(len(cov1)) * 1e-6
            product = sqrtm((cov1 + offset) @ (cov2 + offset))
    return float(np.real(np.trace(product)))


def frechet_distance(mean1, cov1, mean2, cov2, method: SqrtMethod = "auto") -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mean1, cov1) and N(mean2, cov2)."""
    mean1, cov1, mean2, cov2 = map(_numpy, (mean1, cov1, mean2, cov2))
    diff = mean1 - mean2
    trace = np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2, method)
    # Tiny negative values (identical sets) are rounding, not information.
    return max(float(diff @ diff + trace), 0.0)


def fid_from_features(features1, features2, method: SqrtMethod = "auto") -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(
        *gaussian_statistics(features1), *gaussian_statistics(features2), method
    )


# ---------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_inception_distance(
    features1, features2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: (mean, std) over ``num_subsets`` of the unbiased MMD^2 between random subsets.

    Each subset draws ``min(subset_size, N1, N2)`` rows without replacement from each set
    (the torch-fidelity / Bińkowski et al. protocol; the subset size must match when
    comparing numbers, as the std, though not the mean, depends on it).
    """
    x, y = _numpy(features1), _numpy(features2)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = [
        _unbiased_mmd2(
            x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------
# Conditional accuracy
# ---------------------------------------------------------------------------


def conditional_accuracy(predicted, requested) -> float:
    """Fraction of samples whose predicted class (labels (N,) or logits (N, C)) is the
    class the sampler was asked for."""
    predicted, requested = torch.as_tensor(predicted), torch.as_tensor(requested)
    if predicted.ndim == 2:
        predicted = predicted.argmax(dim=1)
    if predicted.shape != requested.shape or len(requested) == 0:
        raise ValueError(
            f"need as many predictions as requested labels, got {tuple(predicted.shape)} "
            f"and {tuple(requested.shape)}"
        )
    return float((predicted.cpu() == requested.cpu()).double().mean())
