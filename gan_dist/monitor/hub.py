"""The run's meeting point on the driver side: ranks report here, the driver reads.

Under Ray it lives in an actor on the driver's node, so it outlives worker
group restarts; without Ray it is a plain object in the same process.
"""

from __future__ import annotations

import time


class RunHub:
    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.starts = 0  # worker-group starts; restarts = starts - 1
        self.world_size = 0
        self.start_step = 0
        self.rows: list[dict] = []
        self.started_at: float | None = None
        self.result: dict | None = None
        # One entry per worker-group session: when it started (state restored), from which
        # step, and when its first step finished (restart cost = first_step_at - the failure).
        self.sessions: list[dict] = []

    def started(self, world_size: int, step: int) -> None:
        """Rank 0 of a (re)started worker group, after restoring its state."""
        self.starts += 1
        self.world_size = world_size
        self.start_step = step
        self.started_at = time.time()
        self.sessions.append({"started_at": self.started_at, "start_step": step, "first_step_at": None})

    def first_step(self) -> None:
        """Rank 0, after the first step of a session."""
        if self.sessions and self.sessions[-1]["first_step_at"] is None:
            self.sessions[-1]["first_step_at"] = time.time()

    def progress(self, row: dict) -> None:
        """Rank 0, once per log interval, with values already reduced across ranks."""
        self.rows.append(row)

    def finished(self, result: dict) -> None:
        """Rank 0, once training and evaluation are done."""
        self.result = result

    def snapshot(self, since: int = 0) -> dict:
        return {"starts": self.starts, "world_size": self.world_size, "start_step": self.start_step,
                "rows": self.rows[since:], "num_rows": len(self.rows), "max_steps": self.max_steps,
                "result": self.result, "sessions": self.sessions}
