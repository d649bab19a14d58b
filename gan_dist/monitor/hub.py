"""The run's meeting point on the driver side: ranks report here, the driver reads.

Under Ray it lives in an actor on the driver's node, so it outlives worker
group restarts; without Ray it is a plain object in the same process. It also
holds the run's metrics and serves them (the one scrape target of the run), and
writes the run's TensorBoard log (monitor.tensorboard, on a thread of its own).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from gan_dist.monitor.metrics import NullMetrics, RunMetrics, scrape_host, write_targets
from gan_dist.monitor.tensorboard import TensorBoardLog
from gan_dist.results import HubSnapshot, WorkerResult


class Hub(Protocol):
    """What the driver asks of the run's hub: a RunHub here, or its proxy to a Ray actor
    (gan_dist.integrations.ray.RemoteHub). Rank 0 reports to it through the same methods
    as trainer.worker.Reporter."""

    def serve_metrics(self, host: str, port: int, run_dir: str, labels: dict[str, str]) -> str | None: ...
    def start_tensorboard(self, log_dir: str, config: dict) -> None: ...
    def snapshot(self, since: int = 0) -> HubSnapshot: ...
    def close(self, pushgateway: str = "", run: str = "", auth: tuple[str, str] | None = None) -> str | None: ...
    def request_stop(self) -> None: ...


class RunHub:
    def __init__(self, max_steps: int, monitoring: bool = True):
        self.max_steps = max_steps
        self.metrics = RunMetrics() if monitoring else NullMetrics()
        self.target: str | None = None  # host:port of the metrics endpoint once served
        self.starts = 0  # worker-group starts; restarts = starts - 1
        self.world_size = 0
        self.start_step = 0
        self.rows: list[dict] = []
        self.alerts: list[dict] = []
        self.started_at: float | None = None
        self.result: WorkerResult | None = None
        # One entry per worker-group session: when it started (state restored), from which
        # step, and when its first step finished (restart cost = first_step_at - the failure).
        self.sessions: list[dict] = []
        # One entry per change of world size between sessions (an elastic run): at which step,
        # from and to which size, why, and what it cost (summary.json "resizes").
        self.resizes: list[dict] = []
        self.last_step = 0  # the step of the last history row reported (by any session)
        # Why the next worker group starts, as Ray Train's controller said it (note_restart).
        self.cause: tuple[str, float] | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.stop_asked = False  # the driver got a SIGTERM: the ranks save and stop

    def serve_metrics(self, host: str, port: int, run_dir: str, labels: dict[str, str]) -> str | None:
        """Start the metrics endpoint and write the run's file-SD target list; its host:port."""
        self.target = serve_target(self.metrics, host, port, run_dir, labels)
        return self.target

    def start_tensorboard(self, log_dir: str, config: dict) -> None:
        """Write the run's TensorBoard log into `log_dir` from now on (`config`: the resolved one)."""
        self.tensorboard = TensorBoardLog(Path(log_dir), config)

    def note_restart(self, why: str) -> None:
        """Ray Train's controller, when it decides to restart the worker group: a failure (a
        worker or node lost) or a resize to the resources it sees now. Causes told before the
        next group starts are all kept, and the time is the first one's: a group that failed
        to start after a node loss is part of that loss's cost."""
        self.cause = (f"{self.cause[0]}; then {why}", self.cause[1]) if self.cause else (why, time.time())

    def started(self, world_size: int, step: int) -> None:
        """Rank 0 of a (re)started worker group, after restoring its state."""
        self.starts += 1
        self.started_at = time.time()
        if self.starts > 1:
            self.metrics.restarted()
        if self.starts > 1 and world_size != self.world_size:
            self._resized(world_size, step)
        self.cause = None
        self.metrics.world_size(world_size)
        self.world_size = world_size
        self.start_step = step
        self.sessions.append({"started_at": self.started_at, "start_step": step, "first_step_at": None})
        if self.tensorboard is not None:
            self.tensorboard.session(step)

    def _resized(self, world_size: int, step: int) -> None:
        why, noticed_at = self.cause or (("grew" if world_size > self.world_size else "shrank")
                                         + " (no reason given by Ray Train)", None)
        self.resizes.append({
            "step": step, "old_world_size": self.world_size, "new_world_size": world_size, "why": why,
            # Steps the previous group had reported past the checkpoint now resumed (seen at log
            # intervals: short of the true count by less than train.log_every).
            "steps_redone": max(self.last_step - step, 0),
            "noticed_at": noticed_at, "started_at": self.started_at, "first_step_at": None,
            "seconds_to_first_step": None})
        self.metrics.resized()

    def first_step(self) -> None:
        """Rank 0, after the first step of a session."""
        if self.sessions and self.sessions[-1]["first_step_at"] is None:
            now = self.sessions[-1]["first_step_at"] = time.time()
            resize = self.resizes[-1] if self.resizes else None
            if resize is not None and resize["first_step_at"] is None and resize["started_at"] == self.started_at:
                resize["first_step_at"] = now
                # From the controller noticing the loss (or the new node) to the first step at the new size.
                if resize["noticed_at"] is not None:
                    resize["seconds_to_first_step"] = now - resize["noticed_at"]

    def progress(self, row: dict) -> None:
        """Rank 0, once per log interval, with values already reduced across ranks."""
        self.last_step = row["step"]
        self.rows.append(row)
        self.metrics.observe(row)
        if self.tensorboard is not None:
            self.tensorboard.row(row)

    def alert(self, event: dict) -> None:
        """Rank 0, when a detector fires. A restarted group replaying the same steps reports the
        same events again: each counts once."""
        key = ("step", "kind", "rollbacks")
        if any(all(a[k] == event[k] for k in key) for a in self.alerts):
            return
        self.alerts.append(event)
        self.metrics.event(event["kind"])
        if self.tensorboard is not None:
            self.tensorboard.alert(event)

    def samples(self, step: int, png: bytes) -> None:
        """Rank 0, at each sample interval: the grid it wrote to samples/."""
        if self.tensorboard is not None:
            self.tensorboard.samples(step, png)

    def finished(self, result: WorkerResult) -> None:
        """Rank 0, once training and evaluation are done."""
        self.result = result

    def request_stop(self) -> None:
        """The driver, on a SIGTERM: the ranks are to save at their next step and stop."""
        self.stop_asked = True

    def stop_requested(self) -> bool:
        """Rank 0 of a Ray run, every STOP_POLL_SECONDS (gan_dist.integrations.ray)."""
        return self.stop_asked

    def close(self, pushgateway: str = "", run: str = "", auth: tuple[str, str] | None = None) -> str | None:
        """End of the run: push the final values if asked, stop serving. An error message or None."""
        error = None
        if pushgateway:
            try:
                self.metrics.push(pushgateway, run, auth)
            except OSError as exc:
                error = f"could not push metrics to {pushgateway}: {exc}"
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return error

    def snapshot(self, since: int = 0) -> HubSnapshot:
        return HubSnapshot(starts=self.starts, world_size=self.world_size, start_step=self.start_step,
                           rows=self.rows[since:], num_rows=len(self.rows), max_steps=self.max_steps,
                           result=self.result, sessions=self.sessions, alerts=self.alerts, target=self.target,
                           resizes=self.resizes)


def serve_target(metrics, host: str, port: int, folder: str, labels: dict[str, str]) -> str | None:
    """Serve `metrics` (a run's, or a tune's population's) and write the file-SD target list
    into `folder`; the endpoint's host:port, or None when monitoring is off."""
    if isinstance(metrics, NullMetrics):
        return None
    port = metrics.serve(host, port)
    write_targets(Path(folder), scrape_host(host), port, labels)
    return f"{scrape_host(host)}:{port}"
