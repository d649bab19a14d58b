"""Collapse signals from a fixed probe: G's samples on fixed noise against a real batch.

Computed once per log interval on every rank (the probe noise is the same on
all ranks, the real batch is each rank's own), then reduced with the other
statistics. Pure tensor functions; the numbers they return are in [0, 1] or
ratios, so thresholds mean the same for points and images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gan_dist.evaluate import covered_classes, high_quality_counts

# Fraction of real samples whose nearest neighbour is closer than the duplicate radius (by its
# definition as this quantile): a G as spread as the data has about this duplicate rate too.
DUPLICATE_QUANTILE = 0.1


def mean_pairwise_distance(x: Tensor) -> Tensor:
    return torch.pdist(x.flatten(1).float()).mean()


def nearest_neighbour_distances(x: Tensor) -> Tensor:
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values


def duplicate_rate(fake: Tensor, real: Tensor) -> Tensor:
    """Birthday-paradox near-duplicates: the fraction of fakes whose nearest fake neighbour is
    closer than the distance under which only DUPLICATE_QUANTILE of reals have one."""
    n = min(len(fake), len(real))
    fake, real = fake[:n].flatten(1).float(), real[:n].flatten(1).float()
    radius = torch.quantile(nearest_neighbour_distances(real), DUPLICATE_QUANTILE)
    return (nearest_neighbour_distances(fake) < radius).float().mean()


def probe_signals(fake: Tensor, real: Tensor) -> dict[str, Tensor]:
    """Diversity (fake/real ratio of mean pairwise distance) and the near-duplicate rate."""
    if min(len(fake), len(real)) < 8:  # too few samples for a neighbour statistic
        return {}
    n = min(len(fake), len(real))
    return {"diversity_ratio": mean_pairwise_distance(fake[:n]) / mean_pairwise_distance(real[:n]),
            "duplicate_rate": duplicate_rate(fake, real)}


def mode_signals(samples: np.ndarray, mixture: dict) -> dict[str, float]:
    """Mode coverage of G's samples of a 2-D mixture, by the rule class coverage follows (the
    modes that get at least a tenth of their fair share of high-quality samples: stricter than
    the eval's one high-quality sample, which a G smeared over the plane passes), and the
    fraction of high-quality samples."""
    counts, high_quality = high_quality_counts(samples, np.asarray(mixture["means"]), mixture["std"])
    return {"mode_coverage_ratio": float(covered_classes(counts, len(samples)).mean()),
            "high_quality_fraction": float(high_quality.mean())}


def class_signals(fake: Tensor, classifier, num_classes: int) -> dict[str, Tensor]:
    """Class coverage of G's samples of labelled images under the eval's classifier of the real
    data (the classes that get at least a tenth of their fair share), as the eval counts it."""
    preds = classifier(fake.float()).argmax(1)
    counts = torch.bincount(preds, minlength=num_classes)
    return {"mode_coverage_ratio": covered_classes(counts, len(fake)).float().mean()}


def collapse_score(row: dict, duplicates: bool = True) -> float:
    """One number in [0, 1] for how collapsed G looks: the worst of the coverage deficit (when
    the modes or classes are known), the excess of near-duplicates over the data's own rate, and
    the diversity deficit. 2-D mixtures leave the duplicates out (`duplicates=False`): there a G
    that draws each mode tighter than the data does is a good one, not a collapsed one."""
    parts = []
    if "mode_coverage_ratio" in row:
        parts.append(1.0 - row["mode_coverage_ratio"])
    if duplicates and "duplicate_rate" in row:
        excess = (row["duplicate_rate"] - DUPLICATE_QUANTILE) / (1 - DUPLICATE_QUANTILE)
        parts.append(excess)
    if "diversity_ratio" in row:
        parts.append(1.0 - row["diversity_ratio"])
    if not parts:
        return 0.0
    score = max(parts)
    return float(min(max(score, 0.0), 1.0)) if np.isfinite(score) else 1.0
