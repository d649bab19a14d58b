"""Quality metrics computed from samples of G_ema.

2-D mixtures, the standard protocol (VEEGAN, PacGAN): draw samples, assign
each to its nearest mode; a sample is high quality if within 3 standard
deviations of that mode; a mode is covered if it has at least one
high-quality sample. `mode_kl` is KL(p || uniform) of the histogram of
high-quality samples over modes (0 when balanced); with no high-quality
sample at all it is log(num_modes), the value for total collapse onto one mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mode_metrics(samples: np.ndarray, means: np.ndarray, std: float) -> dict:
    samples = np.asarray(samples, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    dist = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=2)
    nearest = dist.argmin(axis=1)
    high_quality = dist[np.arange(len(samples)), nearest] < 3 * std
    counts = np.bincount(nearest[high_quality], minlength=len(means))
    num_modes = len(means)
    if counts.sum() == 0:
        kl = math.log(num_modes)
    else:
        p = counts / counts.sum()
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * num_modes)))
    return {
        "modes_covered": int((counts > 0).sum()),
        "num_modes": num_modes,
        "high_quality_fraction": float(high_quality.mean()),
        "mode_kl": kl,
    }


@torch.no_grad()
def generate(G, n: int, z_dim: int, seed: int, device, batch: int = 1024) -> np.ndarray:
    """n samples from G on a fixed noise set (the same for every call with this seed)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        z = torch.randn(min(batch, n - start), z_dim, generator=gen).to(device)
        out.append(G(z).float().cpu().numpy())
    return np.concatenate(out)


def evaluate_points(G, z_dim: int, meta: dict, num_samples: int, seed: int, device) -> dict:
    samples = generate(G, num_samples, z_dim, seed, device)
    mixture = meta["mixture"]
    return mode_metrics(samples, np.asarray(mixture["means"]), mixture["std"])
