"""What a run hands back, typed, in one place: a worker's result, the hub's snapshot, the
run's summary (`summary.json`) and the `RunResult` of `gan_dist.train`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataCounts:
    samples_seen: int = 0  # real samples read by all ranks (resumed runs count from the start)
    corrupt_samples: int = 0  # skipped because they did not decode or were missing


@dataclass
class CheckpointStats:
    saved: int = 0
    blocked_seconds: list[float] = field(default_factory=list)  # the step loop waited, per save
    write_seconds: list[float] = field(default_factory=list)  # serializing and writing in the background
    fallbacks: int = 0  # newer checkpoints found invalid and skipped on restore


@dataclass
class WorkerResult:
    """What rank 0 reports when its training ends: in process, or through the hub under Ray."""

    steps: int
    world_size: int
    images_per_second: float
    train_seconds: float
    session_steps: int
    final: dict[str, Any]  # the last history row's values
    eval: dict[str, Any]
    data: DataCounts
    nonfinite_steps: int
    alerts: list[dict]
    rollbacks: int
    fingerprint: str  # sha256 of G, D and G_ema (gan_dist.trainer.state.fingerprint)
    rank_fingerprints: list[str]
    checkpoints: CheckpointStats
    preempted: bool = False  # a SIGTERM stopped it after a save
    stopped_by: dict | None = None  # the detector event whose policy stopped it


@dataclass
class HubSnapshot:
    """The run's record as the hub holds it (it outlives worker-group restarts)."""

    starts: int  # worker-group starts; restarts = starts - 1
    world_size: int
    start_step: int
    rows: list[dict]  # history rows since the index asked for
    num_rows: int
    max_steps: int
    result: WorkerResult | None
    sessions: list[dict]
    alerts: list[dict]
    target: str | None  # host:port of the metrics endpoint
    resizes: list[dict] = field(default_factory=list)  # changes of world size between sessions


@dataclass
class RunSummary:
    """summary.json (DESIGN.md, "A run directory")."""

    status: str  # completed | failed | stopped
    steps: int
    world_size: int
    restarts: int
    images_per_second: float
    wall_seconds: float
    train_seconds: float  # of it, the training loop's (this session's), periodic evals included
    final: dict[str, Any]
    eval: dict[str, Any]
    alerts: list[dict]
    rollbacks: int
    data: DataCounts
    fingerprint: str | None
    rank_fingerprints: list[str]
    checkpoints: CheckpointStats
    sessions: list[dict]
    # Every change of world size (an elastic run): step, old_world_size, new_world_size, why,
    # steps_redone, and the seconds from Ray noticing it to the first step at the new size.
    resizes: list[dict] = field(default_factory=list)
    error: str | None = None  # why a failed run failed (one line); the traceback is in error_log
    reason: str | None = None  # why a stopped run stopped
    error_log: str | None = None

    @classmethod
    def build(cls, status: str, result: WorkerResult | None, snap: HubSnapshot | None, planned_workers: int,
              wall_seconds: float, error: str | None = None) -> "RunSummary":
        """From rank 0's result where there is one; from the hub's record of a run that died."""
        rows = snap.rows if snap else []
        last = rows[-1] if rows else {}
        common = dict(status=status, restarts=max((snap.starts if snap else 1) - 1, 0), wall_seconds=wall_seconds,
                      # The hub's record survives worker restarts (and counts a replayed event once).
                      alerts=(snap.alerts if snap and snap.alerts else (result.alerts if result else [])),
                      sessions=snap.sessions if snap else [], resizes=snap.resizes if snap else [])
        if status == "failed":
            common["error"] = error
        elif error:
            common["reason"] = error
        if result is not None:
            return cls(steps=result.steps, world_size=result.world_size, train_seconds=result.train_seconds,
                       images_per_second=result.images_per_second, final=result.final, eval=result.eval,
                       rollbacks=result.rollbacks, data=result.data, fingerprint=result.fingerprint,
                       rank_fingerprints=result.rank_fingerprints, checkpoints=result.checkpoints, **common)
        # The last log interval's running totals: what a run that died is known to have read.
        data = DataCounts(samples_seen=int(last.get("samples_seen", 0)),
                          corrupt_samples=int(last.get("corrupt_samples", 0)))
        return cls(steps=last.get("step", snap.start_step if snap else 0),
                   world_size=(snap.world_size if snap else 0) or planned_workers, images_per_second=0.0,
                   train_seconds=0.0,
                   final={k: v for k, v in last.items() if k not in ("step", "time")}, eval={},
                   rollbacks=last.get("rollbacks", 0), data=data, fingerprint=None, rank_fingerprints=[],
                   checkpoints=CheckpointStats(), **common)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("error", "reason", "error_log"):
            if out[key] is None:
                del out[key]
        return out


@dataclass
class RunResult:
    """What `gan_dist.train` returns: where the run is and how it ended."""

    run_dir: Path
    summary: RunSummary

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "completed" else 1


def describe(values: dict) -> str:
    """`name value, ...` with floats to 4 significant digits: alert evidence, the eval line."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def failure_line(exc: BaseException) -> str:
    """Why a run failed, in one line. Ray Train's WorkerGroupError says only "Training failed
    due to worker errors:" on its first line, its ControllerError "Training failed due to
    controller error:"; the lowest failed rank's own error, or the controller's, is the news."""
    failures = getattr(exc, "worker_failures", None) or {}
    prefix = ""
    if failures:
        rank = min(failures)
        prefix, exc = f"rank {rank}: ", failures[rank]
    elif isinstance(getattr(exc, "controller_failure", None), BaseException):
        exc = exc.controller_failure
    text = str(exc).strip()
    return f"{prefix}{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
