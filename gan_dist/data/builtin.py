"""Built-in datasets that need no download.

The 2-D Gaussian mixtures of the GAN mode-collapse literature (VEEGAN, PacGAN,
Unrolled GAN), with the standard definitions:
- ring8: 8 Gaussians, std 0.01, centres on the unit circle at angles 2*pi*i/8
  (not linspace(0, 2*pi, 8), which repeats the first centre and gives 7);
- grid25: 25 Gaussians, std 0.05, centres (i, j) for i, j in {-4, -2, 0, 2, 4}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture2D:
    name: str
    means: np.ndarray  # [K, 2]
    std: float

    @property
    def num_modes(self) -> int:
        return len(self.means)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n points and the index of the Gaussian each came from."""
        modes = rng.integers(0, self.num_modes, size=n)
        points = self.means[modes] + self.std * rng.standard_normal((n, 2))
        return points.astype(np.float32), modes.astype(np.int64)

    def to_meta(self) -> dict:
        return {"means": self.means.tolist(), "std": self.std}

    @classmethod
    def from_meta(cls, name: str, meta: dict) -> "Mixture2D":
        return cls(name, np.asarray(meta["means"], dtype=np.float64), float(meta["std"]))


def ring8() -> Mixture2D:
    angles = 2 * math.pi * np.arange(8) / 8
    return Mixture2D("ring8", np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01)


def grid25() -> Mixture2D:
    ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    means = np.array([(i, j) for i in ticks for j in ticks])
    return Mixture2D("grid25", means, 0.05)


MIXTURES = {"ring8": ring8, "grid25": grid25}

# How builtin mixtures are packed: 2**17 points in records of 256 points, 32 records
# per shard (16 shards). Records hold several points because a training step needs
# hundreds of them and per-record overhead is what limits a streaming reader.
MIXTURE_POINTS = 2**17
POINTS_PER_RECORD = 256
RECORDS_PER_SHARD = 32
# Data identity does not depend on the training seed.
MIXTURE_DATA_SEED = 20140610
