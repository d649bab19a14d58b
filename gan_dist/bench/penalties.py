"""What R1 + R2 cost: a step with them every step, lazily (every 8 steps), and without.

R3GAN (Huang et al. 2024) applies R1 on reals and R2 on fakes at every D step; each takes a
double backward through D, and its users report steps 6-7x slower (brownvc/R3GAN issue 9). The
lazy form (StyleGAN2, App. B) applies them every k steps, weighted by k. Three trainers of the
same recipe share this process and its one torch thread and take turns (the order rotating),
so that a slow spell of a shared machine hits all alike; a block is 8 steps of each (one lazy
period), on one real batch held in memory (no data reading). Each figure is the median over
blocks of the per-block ratio of CPU seconds, against the step without penalties.

    python -m gan_dist.bench.penalties [RECIPE] [--blocks N] [--set KEY=VALUE ...]

Goal (issue 21): lazy R1 + R2 at most 1.3x a step without penalties.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from gan_dist.bench import description
from gan_dist.bench.overhead import block_ratio, bench_config, build_worker, memory_batches, rounds
from gan_dist.trainer.step import train_step

LAZY_INTERVAL = 8
VARIANTS = {
    "none": ["loss.r1_gamma=0", "loss.r2_gamma=0"],
    "every_step": ["loss.r1_interval=1"],
    "lazy": [f"loss.r1_interval={LAZY_INTERVAL}"],
}


def penalty_cost(recipe: str = "r3gan-fashion", blocks: int = 10, overrides: tuple[str, ...] = (),
                 root: Path | None = None) -> dict:
    """CPU seconds per step of `recipe` with R1 + R2 every step and every 8 steps, over a step
    without them (ratios), and steps per CPU second of each; `blocks` periods of 8 steps each,
    after one of warm-up. The recipe must set loss.r1_gamma and loss.r2_gamma."""
    torch.set_num_threads(1)
    root = Path(root or tempfile.mkdtemp(prefix="gan-dist-penalties-"))
    with warnings.catch_warnings():
        # The recipe's loss.r1_interval, with no penalty left to space out in the "none" variant.
        warnings.filterwarnings("ignore", message=r"loss\.r1_interval=\d+ has no effect")
        workers = {name: build_worker(bench_config(recipe, "metrics.enabled=false", "eval.inception=false",
                                                   "eval.every_steps=0", *overrides, *extra), root)
                   for name, extra in VARIANTS.items()}
    batch = {"x": memory_batches(workers["none"], 1)[0], "y": None}
    for w in workers.values():
        w.stream.close()

    def period(w):
        def run() -> None:
            for _ in range(LAZY_INTERVAL):
                train_step(w.st, w.rt, w.ctx, lambda: {"x": batch["x"][:w.ctx.batch_size], "y": None})
        return run

    runs = {name: period(w) for name, w in workers.items()}
    rounds(runs, 1)  # warm-up: allocator, oneDNN's kernels
    t0 = time.time()
    times = rounds(runs, blocks)
    none = workers["none"]
    return {
        "recipe": recipe, "overrides": list(overrides), "batch": none.plan.global_batch,
        "lazy_interval": LAZY_INTERVAL, "blocks": blocks, "seconds": time.time() - t0,
        "every_step_ratio": block_ratio(times["every_step"].cpu, times["none"].cpu, 1),
        "lazy_ratio": block_ratio(times["lazy"].cpu, times["none"].cpu, 1),
        "every_step_ratio_wall": block_ratio(times["every_step"].wall, times["none"].wall, 1),
        "lazy_ratio_wall": block_ratio(times["lazy"].wall, times["none"].wall, 1),
        "steps_per_cpu_second": {name: LAZY_INTERVAL * len(t.cpu) / sum(t.cpu) for name, t in times.items()},
        "goal": "lazy_ratio <= 1.3",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("recipe", nargs="?", default="r3gan-fashion")
    parser.add_argument("--blocks", type=int, default=10, help="periods of 8 steps timed (after one of warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    print(json.dumps(penalty_cost(args.recipe, args.blocks, tuple(args.set)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
