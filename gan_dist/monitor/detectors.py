"""Instability and mode-collapse detectors over the reduced per-interval statistics.

Every rank runs the same detectors on the same reduced row, so every rank
reaches the same events; the loop still agrees on the action with one
collective before acting on it. A condition must hold for `patience`
consecutive log intervals after `warmup_steps` (non-finite values: at once,
warm-up or not);
then the detector fires once, records an event and stays active until the
condition clears. The state is plain data, saved in every checkpoint.
"""

from __future__ import annotations

import enum
import math
import statistics
from dataclasses import asdict, dataclass, field

from gan_dist.config import MonitorConfig


class Action(enum.IntEnum):
    """What the run does about an event; a larger value wins when several fire at once."""

    WARN = 1
    ROLLBACK = 2
    STOP = 3
    # A member of `gan-dist tune`: save and stop now, and the population replaces it by a copy of
    # a healthy member (it also ends the run, and more: the member's own state is given up).
    EXPLOIT = 4


# Detector kind -> the MonitorConfig key holding its policy.
KINDS = {
    "mode_collapse": "collapse",
    "d_overpowering": "d_overpower",
    "exploding_gradients": "gradients",
    "vanishing_gradients": "gradients",
    "divergence": "divergence",
    "nonfinite": "nonfinite",
}

LOSSES = ("loss_d", "loss_g")
D_REAL_ACCURACY = 0.8  # D overpowering also needs D right on this fraction of reals
GRAD_NORMS = ("grad_norm_d", "grad_norm_g")


def spread(values: list[float]) -> float:
    """The variance of a window of losses without its one value farthest from the median: a
    single spike (one interval; a healthy run has them) is not divergence, which shows in
    several intervals."""
    mid = statistics.median(values)
    rest = sorted(values, key=lambda v: abs(v - mid))[:-1]
    return statistics.pvariance(rest)


@dataclass
class Event:
    step: int  # the log interval where it fired
    kind: str
    onset_step: int  # the first interval of the streak: where the problem began
    action: str  # warn | rollback | stop
    evidence: dict = field(default_factory=dict)
    note: str = ""
    # Rollbacks made before it: after a rollback the same steps come round again.
    rollbacks: int = 0
    # A rollback's destination: the step of the checkpoint it restored.
    to_step: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Detectors:
    def __init__(self, cfg: MonitorConfig, scaled: bool = False, phase_starts: tuple[int, ...] = ()):
        self.cfg = cfg
        # Steps where the training changes what its losses measure (super-resolution's SRGAN
        # phase adds D and the adversarial term after the SRResNet phase): the windows start
        # afresh there, so that the new losses are not judged against the old phase's scale.
        self.phase_starts = tuple(s for s in phase_starts if s > 0)
        self.last_step = 0
        # fp16's gradient scaler skips an update now and then by design (it finds its scale by
        # overflowing): skipped updates then count only in `patience` intervals in a row.
        self.scaled = scaled
        self.kinds = [kind for kind, key in KINDS.items() if getattr(cfg, key) != "off"]
        self.reset_windows()
        self.events: list[dict] = []
        self.rollbacks = 0

    def reset_windows(self) -> None:
        """Forget the recent past (after a rollback the restored run starts a fresh window)."""
        self.recent: list[dict] = []  # the last `window` rows (only the fields detectors read)
        self.variances: dict[str, list[float]] = {name: [] for name in LOSSES}  # moving variance history
        self.streak = {kind: 0 for kind in KINDS}
        self.onset = {kind: 0 for kind in KINDS}
        self.onset_loss_g = 0.0
        self.active = {kind: False for kind in KINDS}
        self.last_nonfinite = None

    # Conditions --------------------------------------------------------------------

    def conditions(self, row: dict) -> dict[str, tuple[bool, dict]]:
        """Per kind: does the condition hold in this row, and the evidence."""
        cfg, out = self.cfg, {}
        score = row.get("collapse_score")
        if score is not None:
            out["mode_collapse"] = (score > cfg.collapse_threshold,
                                    _pick(row, "collapse_score", "mode_coverage_ratio", "duplicate_rate",
                                          "diversity_ratio"))
        if "d_acc_fake" in row and "loss_g" in row:
            # D tells fakes apart and still gets most reals right (a D that calls everything fake
            # is lost, not winning).
            out["d_overpowering"] = (row["d_acc_fake"] > cfg.d_overpower_accuracy
                                     and row.get("d_acc_real", 1.0) > D_REAL_ACCURACY,
                                     _pick(row, "d_acc_fake", "d_acc_real", "loss_g"))
        medians = {n: statistics.median(r[n] for r in self.recent) for n in GRAD_NORMS
                   if n in row and len(self.recent) >= 3 and all(math.isfinite(r.get(n, math.nan)) for r in self.recent)}
        high = {n: row[n] for n, m in medians.items() if row[n] > cfg.grad_factor * m}
        low = {n: row[n] for n, m in medians.items() if row[n] < m / cfg.grad_factor}
        if medians:
            out["exploding_gradients"] = (bool(high), {**high, **{f"{n}_median": medians[n] for n in high}})
            out["vanishing_gradients"] = (bool(low), {**low, **{f"{n}_median": medians[n] for n in low}})
        out["divergence"] = self.divergence(row)
        nonfinite = row.get("nonfinite_steps", 0)
        bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
        new_skips = nonfinite - (self.last_nonfinite if self.last_nonfinite is not None else nonfinite)
        out["nonfinite"] = (bool(bad) or new_skips > 0, {"skipped_steps": new_skips, "nonfinite_values": bad})
        return out

    def divergence(self, row: dict) -> tuple[bool, dict]:
        cfg, evidence = self.cfg, {}
        for name in LOSSES:
            value = row.get(name)
            if value is None:
                continue
            if abs(value) > cfg.divergence_loss_limit:
                evidence[name] = value
            values = [r[name] for r in self.recent if name in r] + [value]
            if len(values) < cfg.window or not all(map(math.isfinite, values)):
                continue
            var = spread(values[-cfg.window:])
            usual = self.variances[name]
            if len(usual) >= cfg.window and var > cfg.divergence_factor * max(statistics.median(usual), 1e-12):
                evidence[f"{name}_variance"] = var
                evidence[f"{name}_usual_variance"] = statistics.median(usual)
            usual.append(var)
            del usual[:-64]
        return bool(evidence), evidence

    # Update --------------------------------------------------------------------------

    def update(self, row: dict) -> list[Event]:
        """Feed one log interval's reduced row; the events that fire now (recorded in `events`
        by the caller once it has acted on them)."""
        cfg, step, fired = self.cfg, int(row["step"]), []
        # A row of step s holds steps up to s - 1 (0-based): the first one past a phase start
        # is the first with steps of the new phase.
        if any(self.last_step <= start < step for start in self.phase_starts):
            self.reset_windows()
        self.last_step = step
        settled = step >= cfg.warmup_steps
        for kind, (holds, evidence) in self.conditions(row).items():
            if kind not in self.kinds:
                continue
            if not (holds and (settled or kind == "nonfinite")):
                self.streak[kind], self.active[kind] = 0, False
                continue
            if self.streak[kind] == 0:
                self.onset[kind] = step
                if kind == "d_overpowering":
                    self.onset_loss_g = row["loss_g"]
            self.streak[kind] += 1
            needed = cfg.patience
            if kind == "nonfinite" and (evidence["nonfinite_values"] or not self.scaled):
                needed = 1
            # D overpowering also needs G's loss to have climbed since the streak began.
            climbing = kind != "d_overpowering" or row["loss_g"] > self.onset_loss_g or needed == 1
            if self.streak[kind] >= needed and climbing and not self.active[kind]:
                self.active[kind] = True
                fired.append(Event(step, kind, self.onset[kind], self.policy(kind).name.lower(),
                                   {k: _plain(v) for k, v in evidence.items()}, rollbacks=self.rollbacks))
        self.recent.append({k: row[k] for k in (*LOSSES, *GRAD_NORMS) if k in row})
        del self.recent[:-cfg.window]
        self.last_nonfinite = row.get("nonfinite_steps", 0)
        return fired

    def policy(self, kind: str) -> Action:
        policy = getattr(self.cfg, KINDS[kind])
        if policy == "rollback" and self.rollbacks >= self.cfg.max_rollbacks:
            return Action.STOP  # retries used up
        return Action[policy.upper()]

    def alert_flags(self) -> dict[str, float]:
        return {kind: float(self.active[kind]) for kind in KINDS}

    def raised(self) -> bool:
        """Whether any detector's condition currently holds (fired or still within its patience):
        a checkpoint taken now is not a healthy one to roll back to."""
        return any(self.streak[k] > 0 for k in self.kinds)

    # Checkpointing -------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"recent": self.recent, "variances": self.variances, "streak": self.streak, "onset": self.onset,
                "onset_loss_g": self.onset_loss_g, "active": self.active, "last_nonfinite": self.last_nonfinite,
                "events": self.events, "rollbacks": self.rollbacks, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _pick(row: dict, *names: str) -> dict:
    return {n: row[n] for n in names if n in row}


def _plain(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
