"""A worker's monitor: collapse signals from the probe, then the detectors.

The loop calls `signals` before its once-per-interval reduction and `judge`
on the reduced row; every rank runs both alike. `NullMonitor`
(metrics.enabled=false) answers the same calls with nothing, so the loop has
no `if enabled`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gan_dist.config import Config
from gan_dist.monitor.detectors import KINDS, Action, Detectors, Event
from gan_dist.monitor.signals import collapse_score, mode_signals, probe_signals

# Probe sizes: pairwise statistics on a batch-sized probe; mode coverage as the eval counts it.
PROBE_SAMPLES = 256
COVERAGE_SAMPLES = 2500


class Monitor:
    def __init__(self, cfg: Config, data_meta: dict):
        self.detectors = Detectors(cfg.monitor)
        self.mixture = data_meta.get("mixture") if data_meta.get("kind") == "points" else None

    @property
    def probe_size(self) -> int:
        return COVERAGE_SAMPLES if self.mixture is not None else PROBE_SAMPLES

    def signals(self, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        """This rank's collapse signals, as tensors to reduce with the interval's statistics."""
        if fake is None:
            return {}
        out = probe_signals(fake[:PROBE_SAMPLES], real)
        if self.mixture is not None:
            # Host sync, once per log interval.
            found = mode_signals(fake.float().cpu().numpy(), self.mixture)
            out.update({name: torch.tensor(value, device=fake.device) for name, value in found.items()})
        return out

    def judge(self, row: dict) -> tuple[Action | None, list[Event]]:
        """Add the collapse score and alert flags to a reduced row; the events that fire and the
        strongest action among them (identical on every rank: the row is)."""
        row["collapse_score"] = collapse_score(row)
        events = self.detectors.update(row)
        row.update({f"alert_{kind}": flag for kind, flag in self.detectors.alert_flags().items()})
        row["rollbacks"] = self.detectors.rollbacks
        return max((Action[e.action.upper()] for e in events), default=None), events

    def record(self, events: list[Event]) -> None:
        self.detectors.events.extend(e.to_dict() for e in events)

    def raised(self) -> bool:
        return self.detectors.raised()

    @property
    def events(self) -> list[dict]:
        return self.detectors.events

    @property
    def rollbacks(self) -> int:
        return self.detectors.rollbacks

    def rolled_back(self, kept: dict) -> None:
        """After restoring an earlier checkpoint: keep the record of what happened since (events,
        rollbacks, counted once more), start the windows afresh."""
        self.detectors.load_state_dict(kept)
        self.detectors.reset_windows()
        self.detectors.rollbacks += 1

    def state_dict(self) -> dict:
        return self.detectors.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.detectors.load_state_dict(state)


class NullMonitor:
    probe_size = 0
    events: list = []
    rollbacks = 0

    def signals(self, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        return {}

    def judge(self, row: dict) -> tuple[Action | None, list[Event]]:
        return None, []

    def record(self, events: list[Event]) -> None: ...

    def raised(self) -> bool:
        return False

    def rolled_back(self, kept: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def build_monitor(cfg: Config, data_meta: dict) -> Monitor | NullMonitor:
    return Monitor(cfg, data_meta) if cfg.metrics.enabled else NullMonitor()


__all__ = ["KINDS", "Action", "Monitor", "NullMonitor", "build_monitor"]
