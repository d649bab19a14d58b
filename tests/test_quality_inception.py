"""Inception metrics on real images, at a cost: the ordering of FID and KID on corrupted
images, and the embedding in Ray tasks against the one in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gan_dist.data.sources import resolve_source
from gan_dist.quality import distances, features, inception

pytestmark = pytest.mark.slow


@pytest.mark.unit
def test_fid_and_kid_grow_with_the_noise_on_real_images(cache_dir):
    # 32 images, 4 embeddings of them (half the time of 64): FID 260, 303 and 337 on the AMD EPYC
    # (2026-12-08), each step of noise well clear of the last.
    real = features.read_reals(resolve_source("builtin:digits"), 32)
    rng = np.random.default_rng(0)
    real_features = inception.embed(real)
    fids, kids = [], []
    for sigma in (0.1, 0.3, 0.8):
        noisy = np.clip(real + sigma * rng.standard_normal(real.shape).astype(np.float32), -1, 1)
        noisy_features = inception.embed(noisy)
        fids.append(distances.frechet_distance(real_features, noisy_features))
        kids.append(distances.kid(real_features, noisy_features, num_subsets=20)[0])
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


@pytest.mark.ray
def test_ray_tasks_embed_what_one_process_embeds(cli, cache_dir):
    """--workers 2: Ray tasks of one torch thread each; features agree with this process's up to
    float rounding (another thread count may sum in another order), and are cached alike."""
    done = cli("eval", "--data", "builtin:shapes", "--against", "builtin:digits", "--n", "16", "--workers", "2",
               "--metrics", "pr", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["inception_n"] == 16 and result["precision16"] == result["recall16"] == 0.0
    for name in ("shapes", "digits"):
        index = resolve_source(f"builtin:{name}")
        cached = features.load_cached(features.real_cache_path(index, 16), 16)
        here = inception.embed(features.read_reals(index, 16), batch_size=features.BLOCK)
        assert cached is not None and np.allclose(cached, here, rtol=1e-4, atol=1e-4)
