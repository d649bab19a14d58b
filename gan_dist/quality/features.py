"""The features the metrics compare: generated and real samples embedded in shares, and the
on-disk cache of real features.

Shares. n samples are cut into blocks of BLOCK; share r of W is the contiguous
run of whole blocks `rank_slice(num_blocks, r, W)`, so the shares in rank
order are samples 0..n-1. Generated sample i takes its noise from a NumPy
generator seeded with (seed, i // BLOCK), and from a conditional G the label
i mod K: sample i is the same image whatever the world size. Each block is
embedded as one batch, so its features are the same bits too. Nothing here
draws from torch's or NumPy's global RNG, so an eval never perturbs training.

Gathering is the caller's, through a sharding object that runs a share
function `share(rank, world_size, progress) -> features`:
- `Ranks(rank, world_size, gather)`: each rank runs its own share; `gather`
  is an all-gather of Python objects (a list of every rank's object, on every
  rank: `runtime.Runtime.all_gather_object`), and rank 0 concatenates.
  `Ranks()` is a single process.
- `integrations.ray.RayTasks(workers)`: shares as Ray tasks of one CPU and one
  torch thread each; the driver concatenates.

Reals. The reals of (data set, n) are the first n samples of one seeded pass
over the data (`evaluate.read_real`). Their features are embedded once and
kept under `<data cache>/inception/`, named by the data set's digest (the
sha256 of its shards' sha256s, so a different split or a repacked data set
gets its own entry), n and the network's sha256; stored with np.savez (no
pickle), written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from gan_dist.data.index import DatasetIndex
from gan_dist.data.sources import cache_root
from gan_dist.data.stream import rank_slice
from gan_dist.evaluate import read_real
from gan_dist.quality.inception import FEATURES, NETWORK_SHA256, embed

# Samples per block: the unit of noise seeding, of sharding and of one Inception batch.
BLOCK = 32
# The pass over the data whose first n samples are the reals.
REAL_SEED = 0
# Bump when the reals' selection or the preprocessing changes, so cached features are not reused.
CACHE_VERSION = 1

Progress = Callable[[int], None]
ShareFn = Callable[[int, int, "Progress | None"], np.ndarray]


class Sharding(Protocol):
    is_main: bool

    def agree(self, value):
        """The main process's `value`, on every process (a collective where there are several)."""

    def run(self, share: ShareFn, progress: Progress | None = None) -> np.ndarray | None:
        """Every share's features concatenated in order, on the main process (None elsewhere)."""


@dataclass(frozen=True)
class Ranks:
    """Shares run by the ranks of a process group; `gather` is an all-gather of objects."""

    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list] | None = None

    def __post_init__(self):
        if self.world_size > 1 and self.gather is None:
            raise ValueError("Ranks with world_size > 1 need a gather function")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _gather(self, obj) -> list:
        return [obj] if self.gather is None else self.gather(obj)  # collective: every rank calls it

    def agree(self, value):
        return self._gather(value)[0]

    def run(self, share: ShareFn, progress: Progress | None = None) -> np.ndarray | None:
        parts = self._gather(share(self.rank, self.world_size, progress))
        return np.concatenate(parts) if self.is_main else None


def share_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Samples [start, end) of share `rank` of `world_size`: whole blocks, contiguous."""
    first, last = rank_slice(-(-n // BLOCK), rank, world_size)
    return first * BLOCK, min(last * BLOCK, n)


def _no_features() -> np.ndarray:
    return np.empty((0, FEATURES), dtype=np.float64)


def image_share(images: np.ndarray, rank: int, world_size: int, progress: Progress | None = None, *,
                device: str = "cpu") -> np.ndarray:
    """Features of this share of `images` (NCHW in [-1, 1])."""
    start, end = share_range(len(images), rank, world_size)
    if start >= end:
        return _no_features()
    return embed(images[start:end], device=device, batch_size=BLOCK, progress=progress)


@torch.no_grad()
def generate_block(G, block: int, n: int, z_dim: int, seed: int, num_classes: int = 0,
                   device: str = "cpu") -> np.ndarray:
    """Images of samples [block * BLOCK, min(n, (block + 1) * BLOCK)) from G, float32 NCHW."""
    start, end = block * BLOCK, min(n, (block + 1) * BLOCK)
    # Noise from a generator of this block alone: not the global RNG, and not the world size.
    z = np.random.default_rng([seed, block]).standard_normal((end - start, z_dim), dtype=np.float32)
    z = torch.from_numpy(z).to(device)
    if num_classes:
        y = (torch.arange(start, end) % num_classes).to(device)
        return G(z, y).float().cpu().numpy()
    return G(z).float().cpu().numpy()


def generated_share(G, n: int, z_dim: int, seed: int, rank: int, world_size: int,
                    progress: Progress | None = None, *, num_classes: int = 0, device: str = "cpu") -> np.ndarray:
    """Generate and embed this rank's share of n samples of G (labels cycling through
    `num_classes` classes for a conditional G); float64 [share size, 2048]."""
    start, end = share_range(n, rank, world_size)
    if start >= end:
        return _no_features()
    was_training = G.training
    G.eval()
    try:
        return np.concatenate([embed(generate_block(G, b, n, z_dim, seed, num_classes, device), device=device,
                                     batch_size=BLOCK, progress=progress)
                               for b in range(start // BLOCK, -(-end // BLOCK))])
    finally:
        G.train(was_training)


def generated_features(G, n: int, z_dim: int, seed: int, sharding: Sharding, *, num_classes: int = 0,
                       device: str = "cpu", progress: Progress | None = None) -> np.ndarray | None:
    """Features of n samples of G, on the main process."""
    share = partial(generated_share, G, n, z_dim, seed, num_classes=num_classes, device=device)
    return sharding.run(share, progress)


# Reals and their cache --------------------------------------------------------------

def dataset_digest(index: DatasetIndex) -> str:
    return hashlib.sha256("".join(s.sha256 for s in index.shards).encode()).hexdigest()


def real_cache_path(index: DatasetIndex, n: int, cache_dir: str = "") -> Path:
    name = f"{dataset_digest(index)[:16]}-n{n}-{NETWORK_SHA256[:16]}-v{CACHE_VERSION}.npz"
    return cache_root(cache_dir) / "inception" / name


def load_cached(path: Path, n: int) -> np.ndarray | None:
    """Cached features of n samples at `path`, or None if absent or unusable (then they are remade)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            features, network = saved["features"], str(saved["network_sha256"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a damaged file
        return None
    if features.shape != (n, FEATURES) or network != NETWORK_SHA256:
        return None
    return features.astype(np.float64)


def save_cached(path: Path, features: np.ndarray) -> None:
    """Write features atomically; float32 is lossless (the network computes in float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, features=features.astype(np.float32), network_sha256=np.array(NETWORK_SHA256))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_prefix(index: DatasetIndex, n: int, cache_dir: str = "") -> np.ndarray | None:
    """The first n rows of the cached features of more reals of the same data, if any: the
    reals of (index, n) are the first n of one seeded pass, whatever n, so a 2,000-sample
    eval reuses the 10,000 reals of another."""
    pattern = real_cache_path(index, n, cache_dir).name.replace(f"-n{n}-", "-n*-")
    for path in sorted(real_cache_path(index, n, cache_dir).parent.glob(pattern),
                       key=lambda p: int(p.name.split("-n", 1)[1].split("-", 1)[0])):
        more = int(path.name.split("-n", 1)[1].split("-", 1)[0])
        if more > n and (features := load_cached(path, more)) is not None:
            return features[:n]
    return None


def read_reals(index: DatasetIndex, n: int) -> np.ndarray:
    """The reals of (index, n): float32 NCHW images in [-1, 1]."""
    return read_real(index, n, seed=REAL_SEED)[0]


def real_features(index: DatasetIndex, n: int, sharding: Sharding, *, cache_dir: str = "", device: str = "cpu",
                  progress: Progress | None = None) -> np.ndarray | None:
    """Features of the reals of (index, n) on the main process: from the cache, else embedded in
    shares and cached. Every process follows the main one's finding, so they call the same
    collectives."""
    path = real_cache_path(index, n, cache_dir)
    cached = None
    if sharding.is_main:
        cached = load_cached(path, n)
        cached = cached if cached is not None else cached_prefix(index, n, cache_dir)
    if sharding.agree(cached is not None):
        return cached
    features = sharding.run(partial(image_share, read_reals(index, n), device=device), progress)
    if features is not None:
        save_cached(path, features)
    return features
