"""A log interval's statistics: summed on the device while the steps run, reduced across
ranks once per interval, and read on the host, late by one step on GPUs.

A step hands its scalars to the `Meter` and never waits; the log hook turns the
interval's means into a `PendingRow` whose copy to the host may finish while the
next step runs (`perf.async_stats`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

FOLD_EVERY = 64  # steps whose statistics the Meter holds before summing them


@dataclass
class Meter:
    """Sums per-step statistics on the device; read once per interval.

    A step only hands over its scalars; every `FOLD_EVERY` steps, and at the
    flush, each statistic's scalars are stacked and summed: a few kernels per
    64 steps instead of a stack and an add every step (on a CPU each costs
    about as much as a small layer). A statistic's mean is over the steps that
    had it (R1 runs on some steps only)."""

    pending: list[dict[str, torch.Tensor]] = field(default_factory=list)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    count: int = 0  # steps
    since: float = field(default_factory=time.perf_counter)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        self.pending.append(stats)
        self.count += 1
        if len(self.pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        names = dict.fromkeys(name for stats in self.pending for name in stats)
        for name in names:
            values = [stats[name] for stats in self.pending if name in stats]
            total = torch.stack(values).sum(0)
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + len(values)
        self.pending = []

    def flush(self) -> tuple[dict[str, torch.Tensor], float]:
        """The interval's means and its wall seconds; the meter starts a new interval."""
        self.fold()
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        seconds = time.perf_counter() - self.since
        self.sums, self.counts, self.count, self.since = {}, {}, 0, time.perf_counter()
        return means, seconds


class PendingRow:
    """A log interval's reduced statistics on their way to the host. On a GPU the copy goes to
    pinned memory without blocking and an event marks its end; reading waits for that event
    only, by which time the GPU is already running the next step."""

    def __init__(self, names: list[str], values: torch.Tensor, host: dict):
        self.names, self.host = names, host
        self.ready = None
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.values = values

    def read(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


def reads_stats_late(perf_cfg, device: torch.device) -> bool:
    """Whether a log interval's row is read one step later (`perf.async_stats`, on GPUs)."""
    return perf_cfg.async_stats and device.type == "cuda"
