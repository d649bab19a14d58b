"""The Inception eval's throughput on this machine: images per second of the features of n
generated images, side by side in one command,

    python -m gan_dist.bench.inception [--n 512] [--recipe dcgan-fashion] [--out FILE.json]

- in this process with every core's torch threads (what an eval inside a run without Ray
  does on a rank of a single-process run),
- in this process with one torch thread,
- in Ray tasks of one torch thread each, on a local Ray of 1 CPU and then of 2 CPUs
  (`gan-dist eval --workers W`, and what each Ray worker of a run spends on its share).

The goal of the metrics issue is the 2-worker rate at >= 1.8x the 1-worker rate. G is the
recipe's generator, untrained: generating is a few per cent of the time, and the
Inception network's cost does not depend on what the images show. Reals are not part of
the figure (a second eval on the same data reads them from the cache). Each measurement
embeds the same n images (same seeds), so the figures are comparable; the first also warms
the network's TorchScript up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gan_dist.api import load_config
from gan_dist.bench import description
from gan_dist.data.sources import resolve_source
from gan_dist.models import build_models
from gan_dist.plan import data_shape
from gan_dist.quality.features import Ranks, generated_features


def rate(G, n: int, z_dim: int, sharding) -> float:
    t0 = time.perf_counter()
    features = generated_features(G, n, z_dim, 0, sharding)
    seconds = time.perf_counter() - t0
    assert features.shape[0] == n
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--n", type=int, default=512, help="generated images per measurement (default 512)")
    parser.add_argument("--recipe", default="dcgan-fashion", help="whose generator (default dcgan-fashion)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    cfg = load_config(args.recipe)
    G, _ = build_models(cfg.model, data_shape(resolve_source(cfg.data.source).meta, cfg.model))
    G.eval()
    z = cfg.model.z_dim
    cores = os.cpu_count() or 1
    figures: dict[str, float] = {}
    rate(G, 64, z, Ranks())  # warm-up: the TorchScript network's first calls are slower
    torch.set_num_threads(cores)
    figures[f"in-process, {cores} threads"] = rate(G, args.n, z, Ranks())
    torch.set_num_threads(1)
    figures["in-process, 1 thread"] = rate(G, args.n, z, Ranks())
    # Ray only here: heavy to import, and integrations.ray is the one module that knows it.
    from gan_dist.integrations.ray import RaySession, RayTasks

    for workers in (1, 2):
        session = RaySession("", {"CPU": workers, "GPU": 0})
        try:
            rate(G, 2 * 32 * workers, z, RayTasks(workers))  # the workers' own warm-up
            figures[f"Ray, {workers} worker(s) of 1 thread"] = rate(G, args.n, z, RayTasks(workers))
        finally:
            session.close()
    ratio = figures["Ray, 2 worker(s) of 1 thread"] / figures["Ray, 1 worker(s) of 1 thread"]
    for name, value in figures.items():
        print(f"{name:<32} {value:7.2f} images/s")
    print(f"{'2 Ray workers / 1 Ray worker':<32} {ratio:7.2f}x (goal >= 1.8x)")
    if args.out:
        result = {"images_per_second": figures, "ratio_2_over_1": ratio, "n": args.n, "recipe": args.recipe,
                  "command": f"{parser.prog} --n {args.n} --recipe {args.recipe}",
                  "machine": f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}",
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
