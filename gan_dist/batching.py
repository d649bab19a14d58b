"""How a step's global batch is shared by the workers and split into micro-batches.

Hyper-parameters are defined for the global batch (`data.batch_size`): a recipe
trains with the same math on 1, 2 or 64 workers. Each worker takes an equal
share of the global batch, and puts it through G and D in `accumulation`
micro-batches of `micro_batch` samples, the fewest whose size is at most
`train.batch_per_worker`. Their gradients add up locally (DDP's `no_sync`) and
are all-reduced once, with the last micro-batch; each micro-batch's losses are
divided by the number of micro-batches, so an update sees the mean over the
global batch, as one worker with the whole batch would.

This is a pure function of three numbers, so a run resumed on another number of
workers (or an elastic resize) works out its new split from the same recipe.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchSplitError(ValueError):
    """The global batch cannot be shared by this many workers."""


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int  # samples per D step, all workers together
    world_size: int
    share: int  # one worker's samples per D step
    micro_batch: int  # samples per forward and backward
    accumulation: int  # micro-batches per worker per update

    def describe(self) -> str:
        """For the plan: '512 global, 64 per rank in 2 micro-batches of 32 (gradients accumulated)'."""
        split = ("in one micro-batch" if self.accumulation == 1
                 else f"in {self.accumulation} micro-batches of {self.micro_batch} (gradients accumulated)")
        return f"{self.global_batch} global, {self.share} per rank {split}"


def split_batch(global_batch: int, world_size: int, batch_per_worker: int = 0) -> BatchSplit:
    """The split of `global_batch` over `world_size` workers with micro-batches of at most
    `batch_per_worker` samples (0: no limit). The share must be a whole number of samples; it is
    cut into the fewest equal micro-batches that fit (a share of 96 with at most 40 a micro-batch:
    3 of 32)."""
    if global_batch % world_size:
        raise BatchSplitError(f"data.batch_size {global_batch} does not divide by the world size {world_size}")
    share = global_batch // world_size
    limit = batch_per_worker or share
    accumulation = -(-share // limit)  # the fewest micro-batches of at most `limit`...
    while share % accumulation:  # ...that are all the same size
        accumulation += 1
    return BatchSplit(global_batch, world_size, share, share // accumulation, accumulation)
