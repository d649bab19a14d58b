"""Pure parts: the schedule, the loss values, the mode metrics."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_dist.config import ScheduleConfig
from gan_dist.data.builtin import grid25, ring8
from gan_dist.evaluate import domain_kid, mode_metrics
from gan_dist.losses import ADVERSARIAL_LOSSES
from gan_dist.schedule import build_schedule, lr_at

pytestmark = pytest.mark.unit


def test_n_critic_d_steps_then_one_g_step():
    schedule = build_schedule(ScheduleConfig(n_critic=3))
    for step in (0, 1, 17, 24999):
        assert [p.name for p in schedule.phases_at(step)] == ["Dmain", "Dmain", "Dmain", "Gmain"]
    assert [p.name for p in build_schedule(ScheduleConfig()).phases_at(5)] == ["Dmain", "Gmain"]


def test_ema_beta_is_a_ramped_pure_function_of_the_step():
    schedule = build_schedule(ScheduleConfig(ema_halflife_steps=500, ema_rampup=0.05))
    # A half-life of h steps is beta = 0.5 ** (1 / h); the ramp caps h at 0.05 x (steps done)
    # until that reaches 500, after step 9999.
    for step, halflife in ((0, 0.05), (19, 1.0), (499, 25.0), (4999, 250.0), (9999, 500.0), (15000, 500.0)):
        assert schedule.ema_beta(step) == pytest.approx(0.5 ** (1 / halflife), rel=1e-12), step
    betas = [schedule.ema_beta(s) for s in range(0, 20000, 500)]
    assert all(b1 < b2 for b1, b2 in zip(betas[:20], betas[1:20]))  # ramps up...
    assert len(set(betas[20:])) == 1  # ...then holds
    assert schedule.ema_beta(10**6) == pytest.approx(0.5 ** (1 / 500))
    assert build_schedule(ScheduleConfig(ema_halflife_steps=0)).ema_beta(100) == 0.0


def test_lr_decays_to_zero_at_the_end_from_its_start():
    assert [lr_at(2.0, s) for s in (0, 10**6)] == [2.0, 2.0]  # constant by default
    assert [lr_at(2.0, s, "linear", 100, 300) for s in (0, 100, 200, 300, 400)] == [2.0, 2.0, 1.0, 0.0, 0.0]
    cosine = [lr_at(2.0, s, "cosine", 0, 300) for s in range(0, 301, 50)]
    assert cosine[0] == 2.0 and cosine[3] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))


def test_bce_losses_on_hand_checked_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0])
    # D: -log sigmoid(real) - log(1 - sigmoid(fake)), averaged.
    expected_d = (math.log1p(math.exp(-2)) + math.log(2)) / 2 + (math.log1p(math.exp(-1)) + math.log(2)) / 2
    for kind in ("minimax", "nonsaturating"):
        assert ADVERSARIAL_LOSSES[kind].d_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    # G non-saturating: -log sigmoid(fake); minimax: log(1 - sigmoid(fake)).
    assert ADVERSARIAL_LOSSES["nonsaturating"].g_loss(fake).item() == pytest.approx(
        (math.log1p(math.e) + math.log(2)) / 2, rel=1e-6)
    assert ADVERSARIAL_LOSSES["minimax"].g_loss(fake).item() == pytest.approx(
        -(math.log1p(math.exp(-1)) + math.log(2)) / 2, rel=1e-6)


def test_losses_are_stable_for_large_logits():
    big = torch.tensor([80.0, -80.0])
    for loss in ADVERSARIAL_LOSSES.values():
        # A relativistic G loss also takes D's logits on the paired reals.
        g_loss = loss.g_term(big, -big)
        assert torch.isfinite(loss.d_loss(big, -big)) and torch.isfinite(g_loss)


def test_ring8_has_8_distinct_centres_at_the_standard_angles():
    means = ring8().means
    assert len({tuple(np.round(m, 6)) for m in means}) == 8
    assert np.allclose(np.linalg.norm(means, axis=1), 1.0)
    assert np.allclose(means[1], [math.cos(math.pi / 4), math.sin(math.pi / 4)])
    assert len(grid25().means) == 25 and grid25().std == 0.05


@pytest.mark.parametrize("mixture", [ring8(), grid25()], ids=["ring8", "grid25"])
def test_mode_metrics_ideal_sampler(mixture):
    samples, _ = mixture.sample(2500, np.random.default_rng(0))
    m = mode_metrics(samples, mixture.means, mixture.std)
    assert m["modes_covered"] == m["num_modes"] == mixture.num_modes
    assert m["high_quality_fraction"] > 0.98  # P(r < 3 std) = 1 - exp(-4.5) = 0.989 in 2-D
    assert m["mode_kl"] < 0.02


def test_mode_metrics_collapsed_sampler():
    mixture = ring8()
    samples = mixture.means[3] + mixture.std * np.random.default_rng(1).standard_normal((2500, 2))
    m = mode_metrics(samples, mixture.means, mixture.std)
    assert m["modes_covered"] == 1
    assert m["mode_kl"] == pytest.approx(math.log(8), rel=1e-6)
    far = mode_metrics(np.full((100, 2), 10.0), mixture.means, mixture.std)
    assert far["modes_covered"] == 0 and far["high_quality_fraction"] == 0.0 and far["mode_kl"] == pytest.approx(math.log(8))


def test_models_know_nothing_about_distribution():
    forbidden = {"accelerate", "ray", "torch.distributed"}
    for path in (Path(__file__).parents[1] / "gan_dist" / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path}: imports {name}"


def test_only_the_integrations_import_ray():
    root = Path(__file__).parents[1] / "gan_dist"
    users = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
                users.add(path.relative_to(root).as_posix())
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray" and node.level == 0:
                users.add(path.relative_to(root).as_posix())
    assert users == {"integrations/ray.py", "integrations/ray_tune.py"}  # Ray Train's and Ray Tune's


def test_domain_kid_does_not_depend_on_the_features_scale():
    rng = np.random.default_rng(0)
    real, same, other = rng.normal(0, 1, (600, 16)), rng.normal(0, 1, (600, 16)), rng.normal(0.5, 1, (600, 16))
    assert abs(domain_kid(real, same)) < 0.05 < domain_kid(real, other) < 5
    assert domain_kid(1000 * real, 1000 * other) == pytest.approx(domain_kid(real, other))
