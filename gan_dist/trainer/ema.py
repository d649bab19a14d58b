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
    mode, whose statistics are recomputed for its own weights: the mean of each BatchNorm's
    batch means and (unbiased) variances over `samples` noise vectors drawn from `seed` (labels
    cycling through `num_classes` classes for a conditional G), each batch normalised by its own
    statistics as in training, the way SWA recomputes them for averaged weights (Izmailov et al.
    2018). ema_update copies G's statistics into G_ema every step, so they describe the
    activations of G's weights, not of the average's. The copy stays in eval mode throughout, so
    a BatchNorm synchronised across ranks (model.sync_batchnorm) computes locally here."""
    if not _batchnorms(G):
        return G
    G = copy.deepcopy(G).eval().requires_grad_(False)
    norms = _batchnorms(G)
    sums = {m: [torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)] for m in norms}

    def normalise_by_the_batch(m, args):
        x = args[0].float()
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        m.running_mean.copy_(mean)  # eval mode then normalises by this batch's own statistics
        m.running_var.copy_(var)
        n = x.numel() / x.shape[1]
        sums[m][0] += mean
        sums[m][1] += var * n / max(n - 1, 1)

    hooks = [m.register_forward_pre_hook(normalise_by_the_batch) for m in norms]
    try:
        device = next(G.parameters()).device
        noise = torch.Generator(device="cpu").manual_seed(seed)
        batches = 0
        for start in range(0, samples, batch):
            z = torch.randn(min(batch, samples - start), z_dim, generator=noise).to(device)
            G(z, (torch.arange(start, start + len(z)) % num_classes).to(device)) if num_classes else G(z)
            batches += 1
    finally:
        for hook in hooks:
            hook.remove()
    for m in norms:
        m.running_mean.copy_(sums[m][0] / batches)
        m.running_var.copy_(sums[m][1] / batches)
    return G


def sampling_generator(G_ema: nn.Module, cfg, task: str, num_classes: int) -> nn.Module:
    """The G_ema that is sampled and evaluated: with its own BatchNorm statistics (a copy) under
    `schedule.ema_bn: recompute`, for a G that makes images from noise; else G_ema itself. A
    super-resolution G takes images, not noise: its statistics stay G's."""
    if cfg.schedule.ema_bn == "copy" or task == "super_resolution":
        return G_ema
    return with_own_bn_stats(G_ema, cfg.model.z_dim, num_classes if task == "conditional" else 0, cfg.seed)
