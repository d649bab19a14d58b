"""R3GAN (issue 21): the relativistic pairing loss and R1 + R2, schedules measured in images
seen, the global batch split into micro-batches, the architecture, the Stacked Fashion-MNIST
mode count, the recipes (the CIFAR-10 plan on 8 GPUs, 20 steps of each on 2 Ray workers) and
the penalty benchmark. The DDP and accumulation equivalences are in test_ddp_equivalence.py."""

from __future__ import annotations

import math

import pytest
import torch

from gan_dist.config import resolve
from gan_dist.losses import ADVERSARIAL_LOSSES, diff_augment, r2_penalty
from gan_dist.models import DataShape
from gan_dist.runtime import init_runtime
from gan_dist.schedule import CosineSchedule, build_schedule
from gan_dist.trainer import step as step_module
from gan_dist.trainer.state import build_state, d_lazy_ratio


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
    assert loss.relativistic and not ADVERSARIAL_LOSSES["nonsaturating"].relativistic


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
