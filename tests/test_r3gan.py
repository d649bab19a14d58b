"""R3GAN (issue 21): the relativistic pairing loss and R1 + R2, schedules measured in images
seen, the global batch split into micro-batches, the architecture, the Stacked Fashion-MNIST
mode count, the recipes (the CIFAR-10 plan on 8 GPUs, 20 steps of each on 2 Ray workers) and
the penalty benchmark. The DDP and accumulation equivalences are in test_ddp_equivalence.py."""

from __future__ import annotations

import math

import pytest
import torch

from gan_dist.config import resolve
from gan_dist.losses import ADVERSARIAL_LOSSES, r2_penalty
from gan_dist.schedule import build_schedule
from gan_dist.trainer.state import d_lazy_ratio


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
