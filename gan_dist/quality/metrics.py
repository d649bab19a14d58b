"""The Inception metrics of a generator (or of one data set against another) as one result dict.

Keys name the sample count n: `fid10k` for n = 10,000, `fid500` for 500, and
likewise `kid`, `kid_std`, `precision`, `recall`; beside them `inception_n`
(n), `inception_sha256` (the network's hash), `inception_seconds` (the wall
time of the whole eval on the main process) and `inception_real_seconds` (of
it, the time spent getting the real features: near 0 when they were cached).
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from gan_dist.data.index import DatasetIndex
from gan_dist.quality import distances
from gan_dist.quality.errors import QualityError
from gan_dist.quality.features import Progress, Ranks, Sharding, generated_features, real_features
from gan_dist.quality.inception import NETWORK_SHA256

# "pr" is precision and recall together (one k-NN pass over both sets).
from gan_dist.quality import METRICS  # noqa: E402  (re-exported: the names the command line accepts)


def parse_metrics(names: str | Iterable[str]) -> tuple[str, ...]:
    """Metric names from "fid,kid,pr" (or a list), in a fixed order; unknown names are a QualityError."""
    wanted = [m.strip() for m in names.split(",")] if isinstance(names, str) else [m.strip() for m in names]
    wanted = [m for m in wanted if m]
    unknown = [m for m in wanted if m not in METRICS]
    if unknown or not wanted:
        raise QualityError(f"unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})" if unknown
                           else f"no metric named (known: {', '.join(METRICS)})")
    return tuple(m for m in METRICS if m in wanted)


def n_label(n: int) -> str:
    """How a key names its sample count: 10000 -> "10k", 50000 -> "50k", 500 -> "500"."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def unlabelled(ev: dict, n: int) -> dict:
    """An eval's Inception metrics of n samples under names without n (fid2k is fid); NaN where
    one is missing."""
    label = n_label(n)
    return {k: ev.get(f"{k}{label}", float("nan")) for k in ("fid", "kid", "precision", "recall")}


def check_count(n: int, metrics: Iterable[str], name: str = "n") -> None:
    """n samples are enough for the metrics (2 for a covariance; more than k for precision/recall);
    `name` is what the user called n (a CLI flag, a config key)."""
    if n < 2:
        raise QualityError(f"{name} must be at least 2, got {n}")
    if "pr" in metrics and n <= distances.K_NEAREST:
        raise QualityError(f"precision/recall need more than k = {distances.K_NEAREST} samples, got {name} {n}")


def check_reals(index: DatasetIndex, n: int, what: str = "the data", name: str = "n") -> None:
    """`index` holds at least n images of 1 or 3 channels (`what`: how to name the data set,
    `name`: n, as in check_count)."""
    meta = index.meta
    label = meta.get("name", index.root)
    if meta.get("kind") != "image":
        raise QualityError(f"{what} ({label}) holds {meta.get('kind')}, not images: the Inception metrics need images")
    if meta["sample_shape"][0] not in (1, 3):
        raise QualityError(f"{what} ({label}) has {meta['sample_shape'][0]} channels; Inception takes 1 or 3")
    if n > index.num_samples:
        raise QualityError(f"{name} {n} is more than the {index.num_samples} images {what} ({label}) holds")


def scores(real: np.ndarray, fake: np.ndarray, metrics: Iterable[str]) -> dict:
    """The metrics of features `fake` against `real`, keyed by name and sample count."""
    label = n_label(len(fake))
    out: dict = {}
    if "fid" in metrics:
        out[f"fid{label}"] = distances.frechet_distance(real, fake)
    if "kid" in metrics:
        out[f"kid{label}"], out[f"kid_std{label}"] = distances.kid(real, fake)
    if "pr" in metrics:
        out[f"precision{label}"], out[f"recall{label}"] = distances.precision_recall(real, fake)
    return out


def _result(real: np.ndarray, fake: np.ndarray, metrics, t0: float, real_seconds: float) -> dict:
    return {**scores(real, fake, metrics), "inception_n": len(fake), "inception_sha256": NETWORK_SHA256,
            "inception_seconds": time.perf_counter() - t0, "inception_real_seconds": real_seconds}


def inception_metrics(G, z_dim: int, num_classes: int, index: DatasetIndex, n: int, metrics: Iterable[str] = METRICS,
                      *, seed: int = 0, sharding: Sharding | None = None, device: str = "cpu", cache_dir: str = "",
                      progress: Progress | None = None) -> dict | None:
    """FID/KID/precision/recall of n samples of G (labels cycling through `num_classes` classes,
    0 for an unconditional G) against the first n reals of `index`. With a `sharding` over
    ranks every rank must call this; the result is on the main one, None elsewhere."""
    metrics = parse_metrics(metrics)
    check_count(n, metrics)
    check_reals(index, n)
    sharding = sharding or Ranks()
    t0 = time.perf_counter()
    real = real_features(index, n, sharding, cache_dir=cache_dir, device=device, progress=progress)
    real_seconds = time.perf_counter() - t0
    fake = generated_features(G, n, z_dim, seed, sharding, num_classes=num_classes, device=device, progress=progress)
    if not sharding.is_main:
        return None
    return _result(real, fake, metrics, t0, real_seconds)


def data_metrics(index_a: DatasetIndex, index_b: DatasetIndex, n: int, metrics: Iterable[str] = METRICS, *,
                 sharding: Sharding | None = None, device: str = "cpu", cache_dir: str = "",
                 progress: Progress | None = None) -> dict | None:
    """The metrics of A's first n samples (in the role of the generated ones) against B's."""
    metrics = parse_metrics(metrics)
    check_count(n, metrics)
    check_reals(index_a, n, "--data")
    check_reals(index_b, n, "--against")
    sharding = sharding or Ranks()
    t0 = time.perf_counter()
    real = real_features(index_b, n, sharding, cache_dir=cache_dir, device=device, progress=progress)
    real_seconds = time.perf_counter() - t0
    fake = real_features(index_a, n, sharding, cache_dir=cache_dir, device=device, progress=progress)
    if not sharding.is_main:
        return None
    return _result(real, fake, metrics, t0, real_seconds)
