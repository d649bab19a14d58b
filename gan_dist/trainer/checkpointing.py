"""Saving a checkpoint without stopping the step loop for long: two phases.

1. `Checkpointer.begin` (every rank, at the same step): the whole state is copied
   to CPU memory (the only part the loop waits for), then a background thread
   serializes and writes this rank's files into the folder the sink stages.
2. `Checkpointer.commit` (every rank, at a later step boundary, once the ranks
   agree that every writer is done): the sink makes the checkpoint count
   (`LocalSink` renames the folder into the run directory; `RaySink` hands it to
   `ray.train.report`). Where the sink needs no collective of ours (Ray's report
   is its own barrier), the writer thread commits and phase 2 only waits for it.

What goes into a checkpoint is the worker's business (`Worker.snapshot`); this
module only moves bytes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from gan_dist import checkpoint as ckpt
from gan_dist.results import CheckpointStats
from gan_dist.rundir import HISTORY_FILE, history_bytes, write_atomic
from gan_dist.runtime import Runtime


class Sink(Protocol):
    """Where checkpoints are committed, and where the latest one is found on start."""

    fallbacks: int  # newer checkpoints found invalid and skipped on restore
    # True when commit() needs no collective of ours and may run in the writer thread.
    commits_in_background: bool

    def latest(self): ...  # a context manager yielding the folder to restore from, or None
    def stage(self, rt: Runtime, step: int) -> Path: ...
    def commit(self, rt: Runtime, step: int, folder: Path, metrics: dict) -> None: ...


@dataclass
class Snapshot:
    """A checkpoint's contents, already copied to CPU memory."""

    step: int
    rank_state: dict  # this rank's RNG, noise generator and data cursor
    shared: dict | None  # rank 0: G, D, G_ema, optimizers, history, detectors, scaler
    metrics: dict  # rank 0's manifest metrics (the last row, eval, `healthy`)
    config_yaml: bytes


def cpu_copy(obj):
    """A copy of a nested state whose tensors are cloned to CPU: the in-memory snapshot."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class PendingSave:
    """A checkpoint being serialized and written by a background thread."""

    def __init__(self, step: int, folder: Path, metrics: dict, write, blocked: float):
        self.step, self.folder, self.metrics, self.blocked = step, folder, metrics, blocked
        self.error: BaseException | None = None
        self.write_seconds = 0.0  # serializing and writing, off the step loop
        self.thread = threading.Thread(target=self._run, args=(write,), name=f"checkpoint-{step}", daemon=True)
        self.thread.start()

    def _run(self, write) -> None:
        t0 = time.perf_counter()
        try:
            write()
        except BaseException as exc:  # re-raised in the training thread by wait()
            self.error = exc
        self.write_seconds = time.perf_counter() - t0

    @property
    def busy(self) -> bool:
        return self.thread.is_alive()

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


class Checkpointer:
    """Phase 1 (`begin`) and phase 2 (`commit`) of every save, and their costs."""

    def __init__(self, sink: Sink, run_dir: Path, rt: Runtime, every_minutes: float):
        self.sink, self.run_dir, self.rt, self.every_minutes = sink, run_dir, rt, every_minutes
        self.pending: PendingSave | None = None
        self.last_save = time.time()
        self.blocked_seconds: list[float] = []  # time the step loop was blocked per save
        self.write_seconds: list[float] = []  # background serialization and writing per save

    @property
    def writing(self) -> bool:
        """Whether this rank's writer is still busy (the loop reduces it across ranks)."""
        return self.pending is not None and self.pending.busy

    def begin(self, snap: Snapshot, blocked_since: float) -> None:
        """Phase 1: write `snap` in the background. `blocked_since` is when the loop started
        taking the snapshot (its cost counts as blocked). A previous save must be committed."""
        assert self.pending is None, "commit the previous checkpoint before beginning the next"
        rt, sink, run_dir = self.rt, self.sink, self.run_dir
        folder = sink.stage(rt, snap.step)

        def write() -> None:
            files = {f"rank-{rt.rank:05d}.pt": ckpt.to_bytes(snap.rank_state)}
            if snap.shared is not None:
                files["state.pt"] = ckpt.to_bytes(snap.shared)
                files["config.yaml"] = snap.config_yaml
                write_atomic(run_dir / HISTORY_FILE, history_bytes(snap.shared["history"]))
            ckpt.write_rank_files(folder, rt.rank, rt.world_size, snap.step, files, snap.metrics)
            if sink.commits_in_background:
                sink.commit(rt, snap.step, folder, snap.metrics)

        self.pending = PendingSave(snap.step, folder, snap.metrics, write,
                                   blocked=time.perf_counter() - blocked_since)
        self.last_save = time.time()

    def commit(self) -> None:
        """Phase 2: wait for this rank's writer, then commit the pending checkpoint. Collective:
        every rank calls it at the same step (the loop decides from a reduced flag)."""
        if self.pending is None:
            return
        t0 = time.perf_counter()
        pending, self.pending = self.pending, None
        pending.wait()
        if not self.sink.commits_in_background:
            self.sink.commit(self.rt, pending.step, pending.folder, pending.metrics)
        self.blocked_seconds.append(pending.blocked + time.perf_counter() - t0)
        self.write_seconds.append(pending.write_seconds)

    def overdue(self) -> bool:
        """Whether the minutes since the last save call for one (collective: the same answer
        on every rank)."""
        if self.every_minutes <= 0:
            return False
        return self.rt.broadcast_flag(time.time() - self.last_save >= self.every_minutes * 60)

    def stats(self) -> CheckpointStats:
        return CheckpointStats(saved=len(self.blocked_seconds), blocked_seconds=self.blocked_seconds,
                               write_seconds=self.write_seconds, fallbacks=self.sink.fallbacks)
