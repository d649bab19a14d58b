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
from gan_dist.evaluate import classifier_cache_path, domain_classifier
from gan_dist.models import model_task
from gan_dist.monitor.detectors import KINDS, Action, Detectors, Event
from gan_dist.monitor.signals import class_signals, collapse_score, mode_signals, probe_signals

# Probe sizes: pairwise statistics on a batch-sized probe; mode coverage as the eval counts it;
# class coverage with this many samples expected per class (at least PROBE_SAMPLES in all).
PROBE_SAMPLES = 256
COVERAGE_SAMPLES = 2500
SAMPLES_PER_CLASS = 25


class Monitor:
    def __init__(self, cfg: Config, data_meta: dict, classifier=None):
        self.detectors = Detectors(cfg.monitor, scaled=cfg.train.mixed_precision == "fp16",
                                   phase_starts=(cfg.schedule.srresnet_steps,))
        self.mixture = data_meta.get("mixture") if data_meta.get("kind") == "points" else None
        self.classifier = classifier
        self.num_classes = data_meta.get("num_classes", 0)

    @property
    def probe_size(self) -> int:
        if self.mixture is not None:
            return COVERAGE_SAMPLES
        if self.classifier is not None:
            return max(PROBE_SAMPLES, SAMPLES_PER_CLASS * self.num_classes)
        return PROBE_SAMPLES

    def signals(self, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        """This rank's collapse signals, as tensors to reduce with the interval's statistics."""
        if fake is None:
            return {}
        out = probe_signals(fake[:PROBE_SAMPLES], real)
        if self.mixture is not None:
            # Host sync, once per log interval.
            found = mode_signals(fake.float().cpu().numpy(), self.mixture)
            out.update({name: torch.tensor(value, device=fake.device) for name, value in found.items()})
        if self.classifier is not None:
            out.update(class_signals(fake, self.classifier, self.num_classes))
        return out

    def judge(self, row: dict) -> tuple[Action | None, list[Event]]:
        """Add the collapse score and alert flags to a reduced row; the events that fire and the
        strongest action among them (identical on every rank: the row is)."""
        row["collapse_score"] = collapse_score(row, duplicates=self.mixture is None)
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
        self.detectors.last_step = 0  # the steps come round again: a phase start is crossed again

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


def build_monitor(cfg: Config, index, rt) -> Monitor | NullMonitor:
    if not cfg.metrics.enabled:
        return NullMonitor()
    return Monitor(cfg, index.meta, class_judge(cfg, index, rt))


def class_judge(cfg: Config, index, rt):
    """The eval's classifier of the real data, for live class coverage, when the data is
    labelled images and G generates them (`monitor.class_coverage`). Rank 0 trains it first
    (once per data set, then cached for the run's eval and later runs); the other ranks then
    load it, or train the same one on a node without the cache. Collective."""
    meta = index.meta
    if not (cfg.monitor.class_coverage and meta["kind"] == "image" and meta.get("num_classes", 0) >= 2
            and model_task(cfg.model.arch) != "super_resolution"):
        return None
    net = None
    if rt.rank == 0:
        if not classifier_cache_path(index).exists():
            print("training the data's classifier for class coverage (once per data set, cached)", flush=True)
        net, _ = domain_classifier(index, rt.device)
    rt.barrier()
    if net is None:
        net, _ = domain_classifier(index, rt.device)
    return net.requires_grad_(False)


__all__ = ["KINDS", "Action", "Monitor", "NullMonitor", "build_monitor"]
