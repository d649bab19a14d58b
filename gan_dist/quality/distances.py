"""Distances between a real and a generated set of features, in float64.

- FID (Heusel et al. 2017): the Frechet distance between the Gaussians fitted to
  the two sets, ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^1/2). The trace
  of the root is the sum of the square roots of the eigenvalues of the symmetric
  S_1^1/2 S_2 S_1^1/2, which has the eigenvalues of S_1 S_2: real, with no
  complex round-off to discard as a general sqrtm leaves. With fewer samples
  than dimensions, `frechet_distance` takes the same trace from the samples'
  cross-Gram matrix, far cheaper.
- KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 under the cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3, on random subsets drawn without
  replacement from each set; the mean and the standard deviation over subsets.
- Precision and recall (Kynkaanniemi et al. 2019): a set's manifold is the
  union of balls centred at its points, each with the radius to the point's
  k-th nearest neighbour in the same set (k = 3). Precision is the fraction of
  generated samples inside the real manifold, recall the fraction of real
  samples inside the generated one. Distances are taken a block of rows at a
  time, so 10k x 10k sets (or more) fit in memory.
"""

from __future__ import annotations

import numpy as np

# The paper's neighbourhood size.
K_NEAREST = 3
# Entries of one block of pairwise distances (float64: 128 MiB).
CHUNK_ELEMENTS = 2**24


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of [N, d] features."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def fid(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """The Frechet distance between N(mu_1, sigma_1) and N(mu_2, sigma_2)."""
    w, v = np.linalg.eigh(sigma_1)
    root_1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1)
    return float(((mu_1 - mu_2) ** 2).sum() + np.trace(sigma_1) + np.trace(sigma_2)
                 - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of features. With fewer samples than dimensions (fid500 on 2048-d
    features) the covariances have low rank and the same value comes from an n_a x n_b matrix
    instead of 2048-d eigensolves: for centred A and B, the nonzero eigenvalues of S_a S_b are
    the squared singular values of A B^T / sqrt((n_a - 1)(n_b - 1))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) >= a.shape[1]:
        return fid(*gaussian_stats(a), *gaussian_stats(b))
    mu_a, mu_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mu_a, b - mu_b
    root_trace = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    return float(((mu_a - mu_b) ** 2).sum() + (centred_a ** 2).sum() / (len(a) - 1)
                 + (centred_b ** 2).sum() / (len(b) - 1) - 2 * root_trace)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-sized sets under the cubic polynomial kernel."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid(a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID of two sets of features: mean and std of the unbiased MMD^2 over `num_subsets` random
    subsets of min(subset_size, len(a), len(b)) samples of each (the paper's protocol: 100
    subsets of 1000). The subsets come from their own generator seeded with `seed`."""
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(num_subsets):
        x, y = a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        estimates.append(mmd2_unbiased(x, y))
    # Summed in order (not np.mean's pairwise sum): fid_domain/kid_domain golden values depend on it.
    return float(sum(estimates) / num_subsets), float(np.std(estimates))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] squared Euclidean distances (|a|^2 + |b|^2 - 2 a.b, round-off clipped at 0)."""
    d2 = (a * a).sum(1)[:, None] + b_sq[None, :] - 2 * (a @ b.T)
    return np.maximum(d2, 0, out=d2)


def _block_rows(columns: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(columns, 1))


def knn_radii(x: np.ndarray, k: int = K_NEAREST, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour among the others."""
    x = np.asarray(x, dtype=np.float64)
    x_sq = (x * x).sum(1)
    radii = np.empty(len(x))
    rows = _block_rows(len(x), chunk_elements)
    for start in range(0, len(x), rows):
        d2 = _squared_distances(x[start:start + rows], x, x_sq)
        # Index k, not k - 1: the nearest point (index 0) is the point itself.
        radii[start:start + rows] = np.partition(d2, k, axis=1)[:, k]
    return radii


def inside_fraction(points: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray,
                    chunk_elements: int = CHUNK_ELEMENTS) -> float:
    """Fraction of `points` within at least one ball (centre, squared radius)."""
    points, centres = np.asarray(points, dtype=np.float64), np.asarray(centres, dtype=np.float64)
    c_sq = (centres * centres).sum(1)
    inside = np.zeros(len(points), dtype=bool)
    rows = _block_rows(len(centres), chunk_elements)
    for start in range(0, len(points), rows):
        d2 = _squared_distances(points[start:start + rows], centres, c_sq)
        inside[start:start + rows] = (d2 <= radii_sq[None, :]).any(1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NEAREST,
                     chunk_elements: int = CHUNK_ELEMENTS) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` (both need more than k samples)."""
    precision = inside_fraction(fake, real, knn_radii(real, k, chunk_elements), chunk_elements)
    recall = inside_fraction(real, fake, knn_radii(fake, k, chunk_elements), chunk_elements)
    return precision, recall
