"""What the trainer costs over a hand-written loop, and what monitoring costs, in one process.

Four runs of the same recipe share this process and its one torch thread and
take turns step by step (the order rotating every step), so that a slow spell
of a shared machine hits all alike:
- bare: a hand-written PyTorch loop with the same model, batch, loss,
  optimizer, schedule (a D step on a fresh batch, a G step, G_ema) and data
  held in memory;
- gan-dist: the trainer's own Worker and loop (`train_steps`: `train_step` and
  the interval hooks, the data from its rank stream), monitoring and its
  TensorBoard log on (the defaults), the hub in this process as without Ray;
- gan-dist with `metrics.tensorboard=false`;
- gan-dist with `metrics.enabled=false` and `metrics.tensorboard=false`.
A block is one log interval of steps of each run (so each gan-dist block
holds one log); each figure is the median over blocks of the per-block ratio,
in CPU seconds of this process: on a shared machine other jobs take the cores
away at random, which wall time would count against whichever run had the
core; everything here is one thread, so on an idle core the two agree. The
wall-time ratios are reported beside them.

The step's consumption for the data benchmark is measured here too: gan-dist's
DCGAN-32 step at batch 64, as `bench.data` defines it.
"""

from __future__ import annotations

import copy
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from gan_dist.checkpoint import LocalSink
from gan_dist.config import Config, resolve
from gan_dist.data.stream import RankStream
from gan_dist.models import build_models
from gan_dist.monitor.hub import RunHub
from gan_dist.monitor.tensorboard import TB_DIR
from gan_dist.trainer.loop import train_steps
from gan_dist.trainer.worker import Worker
from gan_dist.trainer.step import train_step

NEVER = 10**9  # a step no segment reaches: no sampling, checkpoint or final step inside the timing


@dataclass
class Times:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def rounds(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, Times]:
    """Time each run once per round, `repeats` rounds, rotating the order every round."""
    times = {name: Times() for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            times[name].wall.append(time.perf_counter() - w0)
            times[name].cpu.append(time.process_time() - c0)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_config(recipe: str, *overrides: str) -> Config:
    """The recipe, with no sampling, checkpoint or end of run inside a segment."""
    return resolve(recipe, [f"train.max_steps={NEVER}", f"train.sample_every={NEVER}",
                            f"checkpoint.every={NEVER}", "perf.torch_threads=1", *overrides])


def build_worker(cfg: Config, root: Path) -> Worker:
    """A Worker of `cfg` in this process, its run directory a new folder under `root`, reporting
    to a hub in this process (as without Ray) that writes TensorBoard events as a run does."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    hub = RunHub(cfg.train.max_steps)
    if cfg.metrics.tensorboard:
        hub.start_tensorboard(str(run_dir / TB_DIR), cfg.to_dict())
    return Worker(cfg, run_dir, LocalSink(run_dir, cfg.checkpoint), hub)


class BareLoop:
    """The loop a user would write by hand for the same run: the same G and D (the model
    zoo's plain modules), Adam, non-saturating loss, one D step on a fresh batch and one
    G step per step, G_ema; batches from memory. No statistics, no hooks."""

    def __init__(self, cfg: Config, shape, batches: list[torch.Tensor]):
        torch.manual_seed(cfg.seed)
        self.G, self.D = build_models(cfg.model, shape)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.optim.lr_g, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.optim.lr_d, betas=betas)
        self.batches, self.z_dim, self.i = batches, cfg.model.z_dim, 0
        self.ema_beta = 0.5 ** (1 / cfg.schedule.ema_halflife_steps)

    def step(self) -> None:
        real = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.no_grad():
            fake = self.G(torch.randn(len(real), self.z_dim))
        loss_D = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        self.D.requires_grad_(False)
        loss_G = F.softplus(-self.D(self.G(torch.randn(len(real), self.z_dim)))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1 - self.ema_beta)


def memory_batches(w: Worker, n: int) -> list[torch.Tensor]:
    """`n` real batches of the worker's data, read once from a stream of their own."""
    stream = RankStream(w.index, 0, 1, w.plan.batch_per_rank, w.cfg.seed + 1, w.cfg.data.shuffle_window)
    batches = [torch.from_numpy(stream.next_batch()["x"]) for _ in range(n)]
    stream.close()
    return batches


def block_ratio(num: list[float], den: list[float], block: int) -> float:
    """The median over blocks of `block` consecutive steps of sum(num) / sum(den)."""
    sums = [(sum(num[i:i + block]), sum(den[i:i + block])) for i in range(0, len(num) - block + 1, block)]
    return statistics.median(n / d for n, d in sums)


def overhead(recipe: str, blocks: int, log_every: int, root: Path) -> dict:
    """overhead_ratio (gan-dist with its defaults over bare, in steps/s), monitor_overhead (step
    time with monitoring over without, TensorBoard off in both: the figure as it was before
    TensorBoard) and tensorboard_overhead (with the TensorBoard log over without it, monitoring
    on in both, minus 1), over `blocks` log intervals (log_every 0: the recipe's).
    tensorboard_thread_fraction: the log's writer thread's own CPU time over the monitored
    run's (the thread runs beside the steps of every run here, so the ratio of step times
    spreads its cost over all four)."""
    torch.set_num_threads(1)
    log = [f"train.log_every={log_every}"] if log_every else []
    on = build_worker(bench_config(recipe, *log, f"metrics.port={free_port()}"), root)
    no_tb = build_worker(bench_config(recipe, *log, f"metrics.port={free_port()}", "metrics.tensorboard=false"), root)
    off = build_worker(bench_config(recipe, *log, "metrics.enabled=false", "metrics.tensorboard=false"), root)
    bare = BareLoop(on.cfg, on.shape, memory_batches(on, 8))
    # One step per turn: the real loop, entered for one step at a time.
    runs = {"bare": bare.step,
            "gan_dist": lambda: train_steps(on, on.st.step + 1),
            "gan_dist_tensorboard_off": lambda: train_steps(no_tb, no_tb.st.step + 1),
            "gan_dist_metrics_off": lambda: train_steps(off, off.st.step + 1)}
    block = on.cfg.train.log_every
    rounds(runs, block)  # warm-up: first shard reads, allocator, caches
    writer = on.reporter.tensorboard
    writer_cpu0 = writer.cpu_seconds
    t = rounds(runs, block * blocks)
    writer.close()
    for w in (on, no_tb, off):
        w.stream.close()
    return {
        "recipe": recipe, "batch": on.plan.batch_per_rank, "log_every": block, "blocks": blocks,
        "overhead_ratio": block_ratio(t["bare"].cpu, t["gan_dist"].cpu, block),
        "overhead_ratio_wall": block_ratio(t["bare"].wall, t["gan_dist"].wall, block),
        "monitor_overhead": block_ratio(t["gan_dist_tensorboard_off"].cpu, t["gan_dist_metrics_off"].cpu, block) - 1,
        "monitor_overhead_wall": block_ratio(t["gan_dist_tensorboard_off"].wall, t["gan_dist_metrics_off"].wall,
                                             block) - 1,
        "tensorboard_overhead": block_ratio(t["gan_dist"].cpu, t["gan_dist_tensorboard_off"].cpu, block) - 1,
        "tensorboard_overhead_wall": block_ratio(t["gan_dist"].wall, t["gan_dist_tensorboard_off"].wall, block) - 1,
        "tensorboard_thread_fraction": (writer.cpu_seconds - writer_cpu0) / sum(t["gan_dist"].cpu),
        "steps_per_cpu_second": {name: len(times.cpu) / sum(times.cpu) for name, times in t.items()},
    }


def step_rate(cfg: Config, steps: int, repeats: int, root: Path) -> float:
    """Images per CPU-second that gan-dist's own step of `cfg` consumes on one thread, on one
    batch of its data held in memory: the best of `repeats` runs of `steps` steps."""
    torch.set_num_threads(1)
    w = build_worker(cfg, root)
    batch = {"x": memory_batches(w, 1)[0], "y": None}
    w.stream.close()
    train_step(w.st, w.rt, w.ctx, lambda: batch)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(steps):
            train_step(w.st, w.rt, w.ctx, lambda: batch)
        best = min(best, time.process_time() - c0)
    return steps * batch["x"].shape[0] / best


def dcgan32_step_rate(steps: int, repeats: int, root: Path) -> float:
    """`step_rate` of `bench.data`'s DCGAN-32 (widths 64-128-256, z of 100, non-saturating loss,
    Adam) at batch 64."""
    return step_rate(bench_config("dcgan-digits", "data.source=builtin:shapes", "data.batch_size=64",
                                  "model.channels=64", "model.z_dim=100", "metrics.enabled=false"),
                     steps, repeats, root)
