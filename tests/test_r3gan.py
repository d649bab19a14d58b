"""R3GAN (issue 21): the relativistic pairing loss and R1 + R2, schedules measured in images
seen, the global batch split into micro-batches, the architecture, the Stacked Fashion-MNIST
mode count, the recipes (the CIFAR-10 plan on 8 GPUs; 20 steps of r3gan-cifar10 and of
r3gan-stacked-fashion on 2 Ray workers of one cluster; r3gan-fashion's steps in the penalty
benchmark's test) and the penalty benchmark. The DDP and accumulation equivalences are in
test_ddp_equivalence.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data_helpers import random_images
from gan_dist import driver, evaluate
from gan_dist.batching import BatchSplitError, split_batch
from gan_dist.cli import main
from gan_dist.config import ConfigError, resolve
from gan_dist.data import builtin
from gan_dist.data.pack import PackOptions, pack_images
from gan_dist.data.readers import array_source
from gan_dist.data.sources import resolve_source
from gan_dist.losses import ADVERSARIAL_LOSSES, diff_augment, r2_penalty
from gan_dist.models import DataShape, build_models
from gan_dist.models.r3gan import ResidualBlock, downsample, upsample
from gan_dist.runtime import init_runtime
from gan_dist.schedule import CosineSchedule, build_cosine, build_schedule
from gan_dist.trainer import step as step_module
from gan_dist.trainer.state import build_state, d_lazy_ratio

IMAGES = DataShape("image", (3, 16, 16), 4)


# The loss and the penalties -------------------------------------------------------------------

@pytest.mark.unit
def test_rpgan_pairs_real_and_fake_element_wise():
    loss = ADVERSARIAL_LOSSES["rpgan"]
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731 (softplus)
    # D: softplus(-(real - fake)) per pair: differences 1 and -1.
    assert loss.d_loss(real, fake).item() == pytest.approx((sp(-1.0) + sp(1.0)) / 2)
    # G: the mirror, softplus(-(fake - real)).
    assert loss.g_loss(fake, real).item() == pytest.approx((sp(1.0) + sp(-1.0)) / 2)
    # Paired, not averaged: which fake meets which real matters.
    assert loss.d_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])).item() != pytest.approx(
        loss.d_loss(torch.tensor([2.0, 0.0]), torch.tensor([2.0, 0.0])).item())
    assert loss.g_uses_real and not ADVERSARIAL_LOSSES["nonsaturating"].g_uses_real


@pytest.mark.unit
def test_r2_is_the_squared_input_gradient_on_fakes():
    w = torch.tensor([3.0, -4.0])
    fakes = torch.randn(5, 2, requires_grad=True)
    assert r2_penalty(fakes @ w, fakes).item() == pytest.approx(25.0)  # ||w||^2 for each sample


@pytest.mark.unit
def test_r1_and_r2_share_the_lazy_phase_and_its_correction():
    lazy = resolve("ring8", ["loss.kind=rpgan", "loss.r2_gamma=1", "loss.r1_interval=4"])
    # R2 alone is lazy too: a Dreg phase every 4 steps, D's lr x 4/5 and betas to the power 4/5
    # (StyleGAN2, App. B).
    schedule = build_schedule(lazy.schedule, lazy.loss)
    assert [p.name for p in schedule.phases_at(0)] == ["Dmain", "Dreg", "Gmain"]
    assert [p.name for p in schedule.phases_at(1)] == ["Dmain", "Gmain"]
    assert d_lazy_ratio(lazy) == pytest.approx(4 / 5)
    # Every step: R1 and R2 are terms of Dmain's loss, no phase of their own and no correction.
    every = resolve("ring8", ["loss.kind=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "loss.r1_interval=1"])
    assert [p.name for p in build_schedule(every.schedule, every.loss).phases_at(1)] == ["Dmain", "Gmain"]
    assert d_lazy_ratio(every) == 1.0


@pytest.mark.unit
def test_augmentations_apply_to_each_image_with_probability_p():
    x = torch.rand(64, 3, 8, 8) * 2 - 1

    def rng(seed):
        return step_module.StepRng(torch.Generator().manual_seed(seed), "cpu")

    assert torch.equal(diff_augment(x, ("cutout",), rng(0), p=0.0), x)
    # p = 1 draws no more random numbers than the old code: the same images from the same seed.
    assert torch.equal(diff_augment(x, ("cutout",), rng(0), p=1.0), diff_augment(x, ("cutout",), rng(0)))
    changed = (diff_augment(x, ("cutout",), rng(1), p=0.5) != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75


# Schedules in images seen ---------------------------------------------------------------------

@pytest.mark.unit
def test_cosine_schedules_are_functions_of_the_images_seen():
    cos = CosineSchedule(images=1000, global_batch=10, lr_end_factor=0.25, beta2=(0.9, 0.99), gamma_end_factor=0.1,
                         ema_halflife_images=100, augment_p=(0.0, 0.5))
    assert cos.lr_factor(0) == 1 and cos.lr_factor(50) == pytest.approx(0.625) and cos.lr_factor(100) == 0.25
    assert cos.lr_factor(1000) == 0.25  # flat after the horizon
    assert cos.beta2_at(0) == pytest.approx(0.9) and cos.beta2_at(100) == pytest.approx(0.99)
    assert cos.gamma_factor(100) == pytest.approx(0.1) and cos.augment_p_at(50) == pytest.approx(0.25)
    # G_ema: a copy of G at first, then the half-life in images: 0.5 ** (batch / half-life) a step.
    assert cos.ema_beta(0) == 0 and cos.ema_beta(100) == pytest.approx(0.5 ** (10 / 100))
    assert 0 < cos.ema_beta(30) < cos.ema_beta(60) < cos.ema_beta(100)
    # The same images seen, the same values, whatever the batch.
    half = CosineSchedule(images=1000, global_batch=5, lr_end_factor=0.25, beta2=(0.9, 0.99))
    assert half.lr_factor(60) == cos.lr_factor(30) and half.beta2_at(60) == cos.beta2_at(30)


@pytest.mark.unit
@pytest.mark.parametrize("override", ["model.stage_widths=128,64,32,32", "model.stage_widths=[128, 64, 32, 32]"])
def test_stage_widths_read_as_a_comma_list_or_a_yaml_list(override):
    cfg = resolve("r3gan-fashion", [override])
    assert cfg.model.stage_widths == "128,64,32,32" and cfg.model.widths == (128, 64, 32, 32)
    G, D = build_models(cfg.model, DataShape("image", (1, 32, 32)))
    assert "widths 128,64,32,32" in G.layout


@pytest.mark.unit
def test_stage_widths_of_other_things_than_integers_are_refused():
    with pytest.raises(ConfigError, match="model.stage_widths must be a comma list or a list of integers"):
        resolve("r3gan-fashion", ["model.stage_widths=[128, wide]"])


@pytest.mark.unit
def test_recipe_schedules_and_phases():
    cfg = resolve("r3gan-fashion")
    cos = build_cosine(cfg.cosine, cfg.optim, cfg.loss, cfg.data.batch_size)
    assert cos.images == cfg.train.max_steps * cfg.data.batch_size  # the horizon is the run
    lazy = build_schedule(cfg.schedule, cfg.loss, cos)
    assert [p.name for p in lazy.phases_at(0)] == ["Dmain", "Dreg", "Gmain"]
    assert [p.name for p in lazy.phases_at(1)] == ["Dmain", "Gmain"]
    every = build_schedule(cfg.schedule, resolve("r3gan-fashion", ["loss.r1_interval=1"]).loss, cos)
    assert [p.name for p in every.phases_at(1)] == ["Dmain", "Gmain"]  # R1 + R2 inside Dmain's loss
    assert lazy.ema_beta(0) == 0 and lazy.ema_beta(cfg.train.max_steps) == pytest.approx(0.5 ** (64 / 20000))
    # Without cosine.images the step-based schedules are untouched.
    assert build_cosine(resolve("ring8").cosine, cfg.optim, cfg.loss, 512) is None


@pytest.mark.unit
def test_the_step_sets_lr_and_beta2_from_the_schedule():
    cfg = resolve("ring8", ["model.hidden=16", "data.batch_size=8", "loss.kind=rpgan", "loss.r1_gamma=1",
                            "loss.r2_gamma=1", "loss.r1_interval=4", "optim.beta1=0", "optim.beta2=0.9",
                            "cosine.images=80", "cosine.lr_end_factor=0.5", "cosine.beta2_end=0.99"])
    rt = init_runtime(0, "no")
    st = build_state(cfg, DataShape("points", (2,)), rt)
    ctx = step_module.build_step_context(cfg, 8, rt.device)
    real = {"x": torch.rand(8, 2), "y": None}
    for _ in range(5):
        step_module.train_step(st, rt, ctx, lambda: real)
    c = 4 / 5  # lazy R1/R2 every 4 steps: D's lr x c, its betas to the power c
    t = 4 * 8 / 80  # the last step's (4) images seen over the horizon
    factor = 0.75 + 0.25 * math.cos(math.pi * t)
    beta2 = 0.99 + (0.9 - 0.99) * 0.5 * (1 + math.cos(math.pi * t))
    assert st.opt_G.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr_g * factor)
    assert st.opt_D.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr_d * c * factor)
    assert st.opt_G.param_groups[0]["betas"] == pytest.approx((0.0, beta2))
    assert st.opt_D.param_groups[0]["betas"] == pytest.approx((0.0, beta2 ** c))


# The global batch and micro-batches -------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("global_batch, workers, limit, share, micro, count", [
    (512, 8, 64, 64, 64, 1), (512, 4, 64, 128, 64, 2), (512, 1, 64, 512, 64, 8), (512, 2, 0, 256, 256, 1),
    (96, 1, 40, 96, 32, 3), (6, 1, 4, 6, 3, 2), (7, 1, 3, 7, 1, 7), (64, 64, 64, 1, 1, 1)])
def test_split_batch(global_batch, workers, limit, share, micro, count):
    split = split_batch(global_batch, workers, limit)
    assert (split.share, split.micro_batch, split.accumulation) == (share, micro, count)
    assert split.micro_batch * split.accumulation * workers == global_batch


@pytest.mark.unit
def test_split_batch_refuses_a_remainder():
    with pytest.raises(BatchSplitError, match="data.batch_size 512 does not divide by the world size 3"):
        split_batch(512, 3, 64)


class RepeatRng:
    """Every micro-batch of an update draws the same numbers (a fresh generator per update), so
    2 micro-batches of the same data must train exactly as 1 of them."""

    def __init__(self):
        self.updates = 0

    def micro(self, k: int, count: int):
        self.updates += k == 0
        return step_module.StepRng(torch.Generator().manual_seed(self.updates), "cpu")


@pytest.mark.unit
@pytest.mark.parametrize("overrides", [
    ["loss.kind=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "loss.r1_interval=1"],
    ["loss.kind=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "loss.r1_interval=2"],
    ["loss.kind=wasserstein", "loss.gp_weight=10", "schedule.n_critic=2"]])
def test_two_identical_micro_batches_train_as_one(monkeypatch, overrides):
    """The accumulated update, its statistics, the penalties and the non-finite skip: 2
    micro-batches of the same data and noise give what 1 gives (the mean of equal gradients),
    and one non-finite micro-batch skips the whole update, counted once."""
    cfg = resolve("ring8", ["model.hidden=16", "data.batch_size=8", "optim.lr_g=1e-3", "optim.lr_d=1e-3",
                            *overrides])
    runs = {}
    for count in (1, 2):
        rt = init_runtime(0, "no")
        st = build_state(cfg, DataShape("points", (2,)), rt)
        ctx = step_module.build_step_context(cfg, 8, rt.device, accumulation=count)
        rng = RepeatRng()
        monkeypatch.setattr(step_module, "make_rng", lambda st_, device: rng)
        reads = 0

        def next_real(poison_at=None):
            nonlocal reads
            draw = reads // count
            reads += 1
            x = torch.rand(8, 2, generator=torch.Generator().manual_seed(draw)) * 2 - 1
            return {"x": x * float("nan") if reads == poison_at else x, "y": None}

        stats = [step_module.train_step(st, rt, ctx, next_real) for _ in range(3)]
        # The last micro-batch of the next D step is not finite: that whole update is skipped.
        poisoned = reads + count
        before = [p.clone() for p in st.D.parameters()]
        step_module.train_step(st, rt, ctx, lambda: next_real(poison_at=poisoned))
        if cfg.schedule.n_critic == 1:
            assert all(torch.equal(a, b) for a, b in zip(before, st.D.parameters()))
        runs[count] = (st, stats, int(st.nonfinite))
    (one, stats1, skipped1), (two, stats2, skipped2) = runs[1], runs[2]
    assert skipped1 == skipped2 >= 1
    for a, b in zip([*one.G.parameters(), *one.D.parameters(), *one.G_ema.parameters()],
                    [*two.G.parameters(), *two.D.parameters(), *two.G_ema.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for s1, s2 in zip(stats1, stats2):
        assert s1.keys() == s2.keys()
        for name in s1:
            torch.testing.assert_close(s1[name], s2[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.unit
def test_the_srresnet_phase_accumulates_two_identical_micro_batches_as_one():
    """SRGAN's content-only phase (Gcontent) under accumulation: 2 micro-batches of the same
    crops train G as 1 does, each micro-batch a fresh real batch, and D is never touched."""
    cfg = resolve("srgan-photos", ["model.channels=8", "model.sr_blocks=1", "data.batch_size=4",
                                   "schedule.srresnet_steps=4", "optim.lr_g=1e-3"])
    runs = {}
    for count in (1, 2):
        rt = init_runtime(0, "no")
        st = build_state(cfg, DataShape("image", (3, 16, 16)), rt)
        ctx = step_module.build_step_context(cfg, 4, rt.device, accumulation=count)
        reads = 0

        def next_real():
            nonlocal reads
            draw = reads // count
            reads += 1
            return {"x": torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(draw)) * 2 - 1}

        g_before, d_before = [p.clone() for p in st.G.parameters()], [p.clone() for p in st.D.parameters()]
        stats = [step_module.train_step(st, rt, ctx, next_real) for _ in range(3)]
        assert reads == 3 * count
        assert all(torch.equal(a, b) for a, b in zip(d_before, st.D.parameters()))
        assert not all(torch.equal(a, b) for a, b in zip(g_before, st.G.parameters()))
        assert all(set(row) == {"content_loss", "loss_g", "grad_norm_g"} for row in stats)
        runs[count] = (st, stats)
    (one, stats1), (two, stats2) = runs[1], runs[2]
    # Parameters only: BatchNorm's running statistics move once per micro-batch.
    for a, b in zip([*one.G.parameters(), *one.G_ema.parameters()], [*two.G.parameters(), *two.G_ema.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for s1, s2 in zip(stats1, stats2):
        for name in s1:
            torch.testing.assert_close(s1[name], s2[name], rtol=1e-5, atol=1e-6, msg=name)


# The architecture -----------------------------------------------------------------------------

def r3gan_cfg(*overrides: str):
    return resolve("ring8", ["model.arch=r3gan", "model.channels=16", "model.z_dim=8", "model.cardinality=4",
                             *overrides]).model


@pytest.mark.unit
@pytest.mark.parametrize("size", [4, 8, 32])
def test_r3gan_makes_the_data_shape(size):
    torch.manual_seed(0)
    G, D = build_models(r3gan_cfg(), DataShape("image", (3, size, size)))
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)
    assert G.layout.startswith(f"4x4 basis to {size}x{size}")


@pytest.mark.unit
def test_r3gan_blocks_start_as_the_identity_with_fixup_scaling():
    G, D = build_models(r3gan_cfg("model.blocks_per_stage=2"), IMAGES)
    blocks = [m for m in [*G.modules(), *D.modules()] if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 * 3 * 2  # 3 stages (4, 8, 16) of 2 blocks, in G and in D
    x = torch.randn(2, 16, 8, 8)
    for block in blocks:
        assert torch.equal(block(x), x)  # the last 1x1 starts at zero
        # He's initialisation for leaky ReLU (fan-in 16 x 1 x 1) scaled by L^(-1/4), L = 6 blocks.
        he = math.sqrt(2 / (1 + 0.2 ** 2)) / math.sqrt(16)
        assert block.widen.weight.std().item() == pytest.approx(he * 6 ** -0.25, rel=0.15)
        assert block.mix.groups == 4
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) for m in [*G.modules(), *D.modules()])


@pytest.mark.unit
def test_resampling_keeps_constants_and_mirrors():
    assert torch.equal(upsample(torch.ones(1, 2, 4, 4)), torch.ones(1, 2, 8, 8))
    assert torch.equal(downsample(torch.ones(1, 2, 8, 8)), torch.ones(1, 2, 4, 4))
    # Upsampling is bilinear: interior pixels are 3/4 their source and 1/4 the neighbour's.
    ramp = torch.arange(4.0).expand(1, 1, 4, 4)
    assert upsample(ramp)[0, 0, 0, 1:7].tolist() == [0.25, 0.75, 1.25, 1.75, 2.25, 2.75]
    # The two are adjoint in the interior: <up(a), b> = 4 <a, down(b)> up to the edges.
    a, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 16, 16)
    b[..., :2, :], b[..., -2:, :], b[..., :, :2], b[..., :, -2:] = 0, 0, 0, 0
    assert (upsample(a) * b).sum().item() == pytest.approx(4 * (a * downsample(b)).sum().item(), rel=1e-4)


@pytest.mark.unit
def test_conditional_r3gan_follows_the_label():
    torch.manual_seed(0)
    G, D = build_models(resolve("ring8", ["model.arch=r3gan_cond", "model.channels=16", "model.z_dim=8",
                                          "model.cardinality=4"]).model, IMAGES)
    z = torch.randn(3, 8)
    a, b = G(z, torch.tensor([0, 0, 0])), G(z, torch.tensor([1, 1, 1]))
    assert not torch.allclose(a, b)
    logits, classes = D(a, torch.tensor([0, 1, 2]), classes=True)
    assert logits.shape == (3,) and classes.shape == (3, 4)


@pytest.mark.unit
def test_the_cifar10_networks_have_the_papers_size():
    cfg = resolve("r3gan-cifar10", ["data.source=builtin:digits"])
    with torch.device("meta"):
        G, D = build_models(cfg.model, DataShape("image", (3, 32, 32), 10))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    # 4 stages x 2 blocks of 768 -> 1536 (96 groups of 16) -> 768: about 2.6M weights a block.
    assert 20e6 < count(G) < 22e6 and 20e6 < count(D) < 22e6
    assert "widths 768,768,768,768, 2 block(s) each, expansion 2, cardinality 96" in G.layout


# Stacked Fashion-MNIST ------------------------------------------------------------------------

@pytest.mark.unit
def test_stacked_modes_on_crafted_classes():
    every = np.array([(a, b, c) for a in range(10) for b in range(10) for c in range(10)])
    found = evaluate.stacked_modes(every, 10)
    assert found == {"modes_covered": 1000, "num_modes": 1000, "mode_kl": pytest.approx(0.0, abs=1e-12)}
    collapsed = evaluate.stacked_modes(np.tile([[3, 1, 4]], (500, 1)), 10)
    assert collapsed["modes_covered"] == 1 and collapsed["mode_kl"] == pytest.approx(math.log(1000))
    half = evaluate.stacked_modes(np.repeat(every[every[:, 0] < 5], 3, axis=0), 10)
    assert half["modes_covered"] == 500 and half["mode_kl"] == pytest.approx(math.log(2))
    # Mode (0, 0, 1) is 1; (1, 0, 0) is 100: the first channel is the most significant digit.
    skew = evaluate.stacked_modes(np.array([[0, 0, 1]] * 3 + [[1, 0, 0]]), 10)
    p = np.array([0.75, 0.25])
    assert skew["modes_covered"] == 2 and skew["mode_kl"] == pytest.approx(float(np.sum(p * np.log(p * 1000))))


class BrightnessClassifier(nn.Module):
    """A one-channel classifier that reads the class from the mean brightness: class k for a
    mean of -0.9 + 0.2 k."""

    def __init__(self):
        super().__init__()
        self.features = nn.Flatten()

    def head(self, f: torch.Tensor) -> torch.Tensor:
        centres = -0.9 + 0.2 * torch.arange(10.0)
        return -(f.mean(1, keepdim=True) - centres).abs()


class CraftedG(nn.Module):
    """Sample i's channels have the brightness of classes modes[i] (a fixed list, cycled)."""

    def __init__(self, modes: np.ndarray):
        super().__init__()
        self.modes, self.calls = torch.as_tensor(modes), 0

    def forward(self, z):
        picked = self.modes[(torch.arange(len(z)) + self.calls) % len(self.modes)]
        self.calls += len(z)
        return (-0.9 + 0.2 * picked.float())[:, :, None, None].expand(-1, -1, 8, 8)


@pytest.mark.unit
def test_evaluate_stacked_counts_the_modes_of_crafted_images(monkeypatch, tmp_path):
    modes = np.array([(a, b, 7) for a in range(10) for b in range(5)])  # 50 modes, evenly
    pixels = ((np.stack([np.full((8, 8), 25 * k) for k in range(3)], axis=2)[None]).repeat(40, 0)).astype(np.uint8)
    source = array_source("stacked", "stacked", pixels, None, [], shuffle=False, seed=0)
    source.meta.update(builtin.STACKED_META)
    (tmp_path / "stacked").mkdir()
    index = pack_images(source, tmp_path / "stacked", PackOptions(shard_samples=16, encode="png"))

    class Base:
        meta = {"num_classes": 10}

    monkeypatch.setattr(evaluate, "resolve_source", lambda source, cache_dir="": Base())
    monkeypatch.setattr(evaluate, "domain_classifier", lambda index, device: (BrightnessClassifier(), 0.9))
    cfg = resolve("r3gan-stacked-fashion", ["eval.num_samples=500", f"data.source={tmp_path / 'stacked'}"])
    result = evaluate.evaluate_generator(CraftedG(modes), cfg, index, "cpu")
    assert result["modes_covered"] == 50 and result["num_modes"] == 1000
    assert result["mode_kl"] == pytest.approx(math.log(1000 / 50))
    assert result["mode_samples"] == 500 and result["classifier_accuracy"] == 0.9
    # The real images here are all one mode (pixel values 0, 25, 50 -> classes 0, 1, 2 at most).
    assert result["modes_covered_data"] == 1 and result["mode_kl_data"] == pytest.approx(math.log(1000))


@pytest.mark.unit
def test_builtin_stacked_fashion_mnist_stacks_three_training_images():
    pixels, labels = builtin.stacked_fashion_mnist(n=16)
    again, _ = builtin.stacked_fashion_mnist(n=16)
    base, _ = builtin.fashion_mnist("fashion-mnist")
    picks = np.random.default_rng(builtin.STACKED_SEED).integers(0, len(base), size=(16, 3))
    assert labels is None and pixels.shape == (16, 32, 32, 3) and np.array_equal(pixels, again)
    for c in range(3):
        assert np.array_equal(pixels[..., c], base[picks[:, c], ..., 0])


# The recipes ----------------------------------------------------------------------------------

def pack_random_cifar(root, n: int = 64):
    pixels, labels = random_images(n, size=32)
    source = array_source("cifar-like", "cifar-like", pixels, labels, ["a", "b", "c"], shuffle=False, seed=0)
    root.mkdir(parents=True)
    return pack_images(source, root, PackOptions(shard_samples=16, encode="png"))


@pytest.mark.unit
@pytest.mark.parametrize("gpus, line", [
    (8, "512 global, 64 per rank in one micro-batch"),
    (4, "512 global, 128 per rank in 2 micro-batches of 64 (gradients accumulated)"),
    (1, "512 global, 512 per rank in 8 micro-batches of 64 (gradients accumulated)")])
def test_cifar10_dry_run_plans_the_same_math_on_any_number_of_gpus(monkeypatch, capsys, tmp_path, gpus, line):
    """The plan `gan-dist train r3gan-cifar10 --dry-run` prints on a cluster of `gpus` GPUs (8:
    the paper's, e.g. 2 nodes of 4), the cluster's resources reported by a stand-in."""
    pack_random_cifar(tmp_path / "cifar10")
    monkeypatch.setattr(driver, "local_resources", lambda: {"CPU": 64.0, "GPU": float(gpus)})
    quiet = dict(warn=lambda message: None)  # eval.inception_n and every_n do nothing with the evals off
    cfg = resolve("r3gan-cifar10", [f"data.source={tmp_path / 'cifar10'}", f"run.storage={tmp_path / 'runs'}",
                                    "eval.inception=false", "eval.every_steps=0", "metrics.port=0"], **quiet)
    assert driver.train(cfg, dry_run=True) is None
    out = capsys.readouterr().out
    assert f"--- plan: {gpus} worker(s), 1 CPU + 1 GPU each on Ray" in out and f"world size        {gpus}\n" in out
    assert f"batch             {line}\n" in out
    assert "model             r3gan_cond, G 2" in out and "cardinality 96" in out
    assert ("schedules         cosine over 20,000,000 images (39,063 steps of 512): lr x1 -> x0.25, beta2 0.9 -> "
            "0.99, gamma x1 -> x0.1") in out
    assert not (tmp_path / "runs").exists()


# Each recipe for 20 steps on 2 Ray workers ------------------------------------------------------
# One Ray node of 2 CPUs serves the three runs (as `gan-dist train --workers 2` starts on this
# machine); each run is the CLI's own code path, in this process, with `--address`, at a CPU's
# width (model.channels 8) and batch, every other setting the recipe's.

RAY_STEPS = 20
RAY_RUN = ["--workers", "2", "--max-steps", str(RAY_STEPS), "--set", "train.log_every=10",
           "--set", "train.sample_every=20", "--set", "checkpoint.every=20", "--set", "eval.inception=false",
           "--set", "eval.every_steps=0", "--set", "metrics.port=0", "--set", "model.channels=8"]


@pytest.fixture(scope="module")
def cluster(cache_dir):
    """The Fashion-MNIST test split packed and its classifier (the eval's and the monitor's)
    trained briefly first, into the session's cache (a run would train it for 1500 steps)."""
    from ray.cluster_utils import Cluster

    evaluate.domain_classifier(resolve_source("builtin:fashion-mnist-test"), torch.device("cpu"), steps=100)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def ray_run(cluster, storage: Path, recipe: str, *overrides: str) -> dict:
    """`recipe`'s run of RAY_STEPS steps on 2 workers; its summary, checked for what any run has."""
    code = main(["train", recipe, "--address", cluster.address, "--storage", str(storage), "--name", recipe,
                 *RAY_RUN, *[arg for kv in overrides for arg in ("--set", kv)]])
    summary = json.loads((storage / recipe / "summary.json").read_text())
    assert code == 0, summary
    assert summary["status"] == "completed" and summary["steps"] == RAY_STEPS and summary["world_size"] == 2
    assert len(summary["rank_fingerprints"]) == 2 and len(set(summary["rank_fingerprints"])) == 1  # replicas agree
    final = summary["final"]
    # R1 and R2 ran: every step in r3gan-cifar10, lazily in the Stacked Fashion-MNIST recipe
    # (interval 8: steps 0, 8 and 16, so in both log intervals of 10).
    for key in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "r1_penalty", "r2_penalty"):
        assert math.isfinite(final[key]), (key, final)
    return summary


@pytest.mark.ray
@pytest.mark.slow
def test_r3gan_stacked_fashion_trains_on_2_ray_workers_and_counts_modes(cluster, tmp_path):
    # 512 stacked images, each channel classified by the test split's classifier.
    pixels, _ = builtin.stacked_fashion_mnist(n=512)
    source = array_source("stacked", "stacked", pixels, None, [], shuffle=False, seed=0)
    source.meta.update({"stacked": {**builtin.STACKED_META["stacked"], "base": "fashion-mnist-test"}})
    (tmp_path / "stacked").mkdir()
    pack_images(source, tmp_path / "stacked", PackOptions(shard_samples=64, encode="png"))
    summary = ray_run(cluster, tmp_path, "r3gan-stacked-fashion", f"data.source={tmp_path / 'stacked'}",
                      "data.batch_size=16", "eval.num_samples=500")
    found = summary["eval"]
    assert found["num_modes"] == 1000 and found["mode_samples"] == 500 and 1 <= found["modes_covered"] <= 500
    assert 0 <= found["mode_kl"] <= math.log(1000)
    # 500 of the 512 real images, each of 1,000 modes at random: about 390 distinct.
    assert found["modes_covered_data"] > 300


@pytest.mark.ray
@pytest.mark.slow
def test_r3gan_cifar10_trains_on_2_ray_workers_in_micro_batches(cluster, tmp_path):
    """The CIFAR-10 recipe (conditional, R1 + R2 every step, translation with a scheduled
    probability) on random labelled images: 16 a step, 2 micro-batches of 4 on each worker."""
    index = pack_random_cifar(tmp_path / "cifar10")
    evaluate.domain_classifier(index, torch.device("cpu"), steps=100)  # not the run's 1500 steps
    summary = ray_run(cluster, tmp_path, "r3gan-cifar10", f"data.source={tmp_path / 'cifar10'}",
                      "model.cardinality=4", "data.batch_size=16", "train.batch_per_worker=4",
                      "data.num_workers=0", "eval.num_samples=64", "checkpoint.every_minutes=0")
    assert summary["data"]["samples_seen"] == RAY_STEPS * 16
    assert 0 <= summary["eval"]["class_match"] <= 1


# The cost of R1 + R2 ----------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.slow
def test_penalty_bench_reports_finite_ratios(cache_dir):
    from gan_dist.bench.penalties import penalty_cost

    # No class coverage: the digits' classifier (1500 steps to train) is no part of a step's cost.
    result = penalty_cost("r3gan-fashion", blocks=1, overrides=("data.source=builtin:digits", "model.channels=8",
                                                                 "model.cardinality=4", "data.batch_size=8",
                                                                 "monitor.class_coverage=false"))
    for key in ("every_step_ratio", "lazy_ratio", "every_step_ratio_wall", "lazy_ratio_wall"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert set(result["steps_per_cpu_second"]) == {"none", "every_step", "lazy"}
    assert result["lazy_interval"] == 8 and result["batch"] == 8
