"""G_ema: an exponential moving average of G's weights (Karras et al. 2018), and the BatchNorm
statistics that fit its own weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

# Noise inputs over which G_ema's BatchNorm statistics are recomputed, in batches of BN_BATCH.
BN_SAMPLES, BN_BATCH = 8192, 512


@torch.no_grad()
def ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G; buffers are copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def _batchnorms(G: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def with_own_bn_stats(G: nn.Module, z_dim: int, num_classes: int = 0, seed: int = 0,
                      samples: int = BN_SAMPLES, batch: int = BN_BATCH) -> nn.Module:
    """G itself (unchanged) when it keeps no BatchNorm running statistics; else a copy, in eval
    mode, whose statistics are recomputed for its own weights: the mean and variance of each
    BatchNorm's input over `samples` noise vectors drawn from `seed` (labels cycling through
    `num_classes` classes for a conditional G), as SWA does for averaged weights (Izmailov et
    al. 2018). ema_update copies G's statistics into G_ema every step, so they describe the
    activations of G's weights, not of the average's."""
    norms = _batchnorms(G)
    if not norms:
        return G
    G = copy.deepcopy(G)
    device = next(G.parameters()).device
    for m in _batchnorms(G):
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    G.train()
    noise = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), z_dim, generator=noise).to(device)
        if num_classes:
            G(z, (torch.arange(start, start + len(z)) % num_classes).to(device))
        else:
            G(z)
    for m, original in zip(_batchnorms(G), norms):
        m.momentum = original.momentum
    return G.eval().requires_grad_(False)


def sampling_generator(G_ema: nn.Module, cfg, task: str, num_classes: int) -> nn.Module:
    """The G_ema that is sampled and evaluated: with its own BatchNorm statistics (a copy) under
    `schedule.ema_bn: recompute`, for a G that makes images from noise; else G_ema itself. A
    super-resolution G takes images, not noise: its statistics stay G's."""
    if cfg.schedule.ema_bn == "copy" or task == "super_resolution":
        return G_ema
    return with_own_bn_stats(G_ema, cfg.model.z_dim, num_classes if task == "conditional" else 0, cfg.seed)
