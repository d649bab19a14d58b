"""Plug-ins for the tests, named by module:attr path (`model.arch=plugin_fixtures:g_of_three_values`):
builders and losses that break the contract of gan_dist.models and gan_dist.losses one way
each, and a few that keep it. This folder is on the tests' import path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.losses import AdversarialLoss
from gan_dist.models.mlp import build_mlp_gan


class Linear(nn.Module):
    """G or D of points: one linear layer, output reshaped to `out_shape` per sample."""

    def __init__(self, in_features: int, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = out_shape
        self.net = nn.Linear(in_features, int(torch.Size(out_shape).numel()))

    def forward(self, x, y=None):
        return self.net(x.flatten(1)).view(x.shape[0], *self.out_shape)


def mlp(cfg, shape):
    """Keeps the contract: the built-in MLP through a path."""
    return build_mlp_gan(cfg, shape)


def g_of_three_values(cfg, shape):
    """G makes samples of 3 values; ring8's have 2."""
    return Linear(cfg.z_dim, (3,)), Linear(2, ())


def d_of_shape_b1(cfg, shape):
    """D returns logits of shape [B, 1] instead of [B]."""
    return Linear(cfg.z_dim, shape.sample_shape), Linear(2, (1,))


def conditional_without_labels(cfg, shape):
    """Says it is conditional, but G takes no labels."""
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(cfg.z_dim, 2)

        def forward(self, z):
            return self.net(z)
    return G(), Linear(2, ())


conditional_without_labels.task = "conditional"


def one_module(cfg, shape):
    return Linear(cfg.z_dim, (2,))


def reads_a_missing_option(cfg, shape):
    depth = cfg.options["depth"]  # a KeyError when the recipe has no model.options.depth
    return Linear(cfg.z_dim, (2,) * depth), Linear(2, ())


def unknown_task(cfg, shape):
    return mlp(cfg, shape)


unknown_task.task = "text_to_image"


def options_seen(cfg, shape):
    """Records the options it was handed, unchanged, on G."""
    G, D = mlp(cfg, shape)
    G.options_seen = cfg.options
    return G, D


class ReadsAValue(nn.Module):
    """G that reads a value on the host (.item()): the meta device cannot run it."""

    def __init__(self, z_dim: int, out: int):
        super().__init__()
        self.net = nn.Linear(z_dim, out)

    def forward(self, z):
        scale = 1.0 / max(1.0, float(z.abs().max().item()))
        return self.net(z * scale)


def reads_a_value(cfg, shape):
    return ReadsAValue(cfg.z_dim, 2), Linear(2, ())


def reads_a_value_of_three(cfg, shape):
    return ReadsAValue(cfg.z_dim, 3), Linear(3, ())


not_a_builder = 42


# Losses ---------------------------------------------------------------------------------

per_sample = AdversarialLoss(d_loss=lambda real, fake: F.softplus(-real) + F.softplus(fake),
                             g_loss=lambda fake: F.softplus(-fake).mean())

detached = AdversarialLoss(d_loss=lambda real, fake: (F.softplus(-real) + F.softplus(fake)).mean().detach(),
                           g_loss=lambda fake: F.softplus(-fake).mean())

not_a_loss = {"d_loss": None, "g_loss": None}


class Recorder:
    """A relativistic loss (RSGAN) that keeps the logits its G term was given."""

    def __init__(self):
        self.g_calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def d_loss(self, real, fake):
        return F.softplus(-(real - fake)).mean()

    def g_loss(self, fake, real):
        self.g_calls.append((fake.detach().clone(), real.detach().clone()))
        return F.softplus(-(fake - real)).mean()


recorder = Recorder()
recording = AdversarialLoss(d_loss=recorder.d_loss, g_loss=recorder.g_loss, g_uses_real=True)
