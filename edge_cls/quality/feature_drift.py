"""Drift from features: do new images fill the embedding space as the validation images did?

Confidence and class shares (:mod:`edge_cls.quality.drift`) miss a shift that leaves both alone:
blurred or recoloured images the model still answers, confidently. The artifact stores the drift
features of its validation images (the leading principal coordinates of its embeddings, see
:mod:`edge_cls.artifact.embeddings`); :func:`mmd_test` compares new images' features with them by
a two-sample test:

- statistic: the squared maximum mean discrepancy (Gretton et al. 2012, biased estimate) with a
  Gaussian kernel, on features standardised by the pooled mean and spread, bandwidth the pooled
  median distance (both symmetric in the two samples, so the permutation test stays exact);
- p-value: the share of :data:`PERMUTATIONS` random relabellings of the pooled images whose
  statistic is at least the observed one (Phipson & Smyth 2010's +1 correction);
- threshold: the (1 - :data:`ALPHA`) quantile of those permuted statistics; the images are flagged
  when the statistic exceeds it, i.e. p < ALPHA = 0.01: a folder of the validation distribution is
  flagged about 1 time in 100 (measured in tests/quality/test_feature_drift.py).

At most :data:`MAX_IMAGES` new images are compared (a seeded random subset), so time and memory stay
bounded: the kernel matrix is at most (1000 + 1000)^2. numpy only: this runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_cls.errors import ConfigError

ALPHA = 0.01
PERMUTATIONS = 500
MAX_IMAGES = 1000
_BLOCK = 100  # permutations evaluated at once: a (pooled, 100) matrix


@dataclass(frozen=True)
class FeatureShift:
    """The outcome of one two-sample test of new images' features against the stored reference."""

    statistic: float  # MMD^2
    threshold: float  # the (1 - alpha) quantile of the permuted statistics
    p_value: float
    images: int
    reference_images: int
    dims: int
    permutations: int
    alpha: float = ALPHA

    @property
    def flagged(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {"test": "mmd-rbf-permutation", "statistic": self.statistic, "threshold": self.threshold,
                "p_value": self.p_value, "alpha": self.alpha, "flagged": self.flagged, "images": self.images,
                "reference_images": self.reference_images, "dims": self.dims, "permutations": self.permutations}

    def line(self) -> str:
        verdict = "shifted" if self.flagged else "no shift found"
        return (f"MMD^2 {self.statistic:.4f} (threshold {self.threshold:.4f} at alpha {self.alpha:g}), "
                f"p = {self.p_value:.3f} over {self.permutations} permutations, {self.dims} dims: {verdict}")


def mmd_test(reference: np.ndarray, current: np.ndarray, *, permutations: int = PERMUTATIONS, alpha: float = ALPHA,
             seed: int = 0) -> FeatureShift:
    """Two-sample permutation test of ``current`` (N, d) features against ``reference`` (M, d)."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ConfigError(f"features must be (N, d) with the same d, got {reference.shape} and {current.shape}")
    if len(reference) < 2 or len(current) < 2:
        raise ConfigError("a drift test needs at least 2 reference and 2 new images")
    rng = np.random.default_rng(seed)
    if len(current) > MAX_IMAGES:
        current = current[rng.choice(len(current), MAX_IMAGES, replace=False)]
    kernel = _kernel(np.vstack([reference, current]))
    m, n = len(reference), len(current)
    observed = _statistics(kernel, np.r_[np.full(m, 1 / m), np.full(n, -1 / n)][:, None])[0]
    null = np.concatenate([_statistics(kernel, _relabelled(rng, m, n, min(_BLOCK, permutations - done)))
                           for done in range(0, permutations, _BLOCK)])
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return FeatureShift(statistic=float(observed), threshold=float(np.quantile(null, 1 - alpha)), p_value=p_value,
                        images=n, reference_images=m, dims=reference.shape[1], permutations=permutations, alpha=alpha)


def _kernel(pooled: np.ndarray) -> np.ndarray:
    """Gaussian kernel matrix of the pooled features, standardised, at the median pairwise distance."""
    spread = pooled.std(0)
    z = (pooled - pooled.mean(0)) / np.where(spread > 0, spread, 1.0)
    squared = np.sum(z**2, 1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * z @ z.T, 0.0)
    upper = distances[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    return np.exp(-distances / bandwidth).astype(np.float32)


def _relabelled(rng: np.random.Generator, m: int, n: int, count: int) -> np.ndarray:
    """(m + n, count) weights: +1/m for the images a random relabelling calls reference, -1/n for the rest."""
    weights = np.empty((m + n, count), np.float32)
    base = np.r_[np.full(m, 1 / m), np.full(n, -1 / n)].astype(np.float32)
    for j in range(count):
        weights[:, j] = base[rng.permutation(m + n)]
    return weights


def _statistics(kernel: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MMD^2 for each column of weights: w^T K w."""
    return np.sum(weights * (kernel @ weights.astype(np.float32)), axis=0).astype(np.float64)
