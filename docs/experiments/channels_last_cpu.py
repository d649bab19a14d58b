"""channels_last against contiguous memory format on this CPU: a recipe's G and D, one torch
thread, batch 32 (a worker's share of 64), a non-saturating D step and G step, fused Adam; the
two take turns in blocks of 25 steps, and each one's CPU time per step is the median over blocks.

    python docs/experiments/channels_last_cpu.py [RECIPE] [BLOCKS]
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from gan_dist.api import load_config
from gan_dist.models import build_models
from gan_dist.plan import DataShape

BATCH, STEPS_PER_BLOCK = 32, 25


def arm(G0, D0, channels_last: bool):
    G, D = copy.deepcopy(G0), copy.deepcopy(D0)
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    return G, D, torch.optim.Adam(G.parameters(), 1e-3, fused=True), torch.optim.Adam(D.parameters(), 1e-3, fused=True)


def step(G, D, opt_G, opt_D, real: torch.Tensor, z_dim: int) -> None:
    with torch.no_grad():
        fake = G(torch.randn(BATCH, z_dim))
    opt_D.zero_grad(set_to_none=True)
    (F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()).backward()
    opt_D.step()
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    F.softplus(-D(G(torch.randn(BATCH, z_dim)))).mean().backward()
    opt_G.step()
    D.requires_grad_(True)


def main() -> None:
    recipe = sys.argv[1] if len(sys.argv) > 1 else "dcgan-fashion"
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(recipe)
    G0, D0 = build_models(cfg.model, DataShape(kind="image", sample_shape=(1, 32, 32), num_classes=10))
    real = torch.rand(BATCH, 1, 32, 32) * 2 - 1
    arms = {layout: arm(G0, D0, layout) for layout in (False, True)}
    for nets in arms.values():  # warm-up
        for _ in range(10):
            step(*nets, real, cfg.model.z_dim)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for block in range(blocks):
        for layout in ((False, True) if block % 2 == 0 else (True, False)):
            t0 = time.process_time()
            for _ in range(STEPS_PER_BLOCK):
                step(*arms[layout], real, cfg.model.z_dim)
            seconds[layout].append((time.process_time() - t0) / STEPS_PER_BLOCK)
    contiguous, channels_last = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"{recipe}: contiguous {contiguous * 1e3:.1f} ms/step, channels_last {channels_last * 1e3:.1f} ms/step "
          f"(CPU time, median of {blocks} blocks); channels_last / contiguous {channels_last / contiguous:.3f}")


if __name__ == "__main__":
    main()
