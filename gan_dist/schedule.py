"""The training schedule as data: which phases run at a step, lr and EMA decay.

Everything here is a pure function of the step and the config, so every rank
computes the same schedule without talking to the others. One training step is
one G update preceded by `n_critic` D updates, each on a fresh real batch
(WGAN counts "generator iterations" the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str  # Dmain, Dreg, Gmain, Greg
    net: str  # "D" or "G"
    interval: int = 1  # runs when step % interval == 0

    def active(self, step: int) -> bool:
        return step % self.interval == 0


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]
    n_critic: int
    ema_halflife_steps: float
    ema_rampup: float

    def phases_at(self, step: int) -> list[Phase]:
        """Phases run at `step`, in order: D phases n_critic times, then G phases."""
        run: list[Phase] = []
        for _ in range(self.n_critic):
            run += [p for p in self.phases if p.name == "Dmain"]
        run += [p for p in self.phases if p.net == "D" and p.name != "Dmain" and p.active(step)]
        run += [p for p in self.phases if p.net == "G" and p.active(step)]
        return run

    def real_batches_per_step(self) -> int:
        return self.n_critic

    def ema_beta(self, step: int) -> float:
        """G_ema decay after `step` G steps: a half-life in steps, ramped up at the start
        so early G_ema tracks G closely (as stylegan2-ada's ema_rampup does with kimg)."""
        halflife = self.ema_halflife_steps
        if self.ema_rampup > 0:
            halflife = min(halflife, (step + 1) * self.ema_rampup)
        if halflife <= 0:
            return 0.0
        return 0.5 ** (1.0 / halflife)


def build_schedule(schedule_cfg, loss_cfg=None) -> Schedule:
    """The phases: Dmain (n_critic times), Dreg when R1 or R2 is lazy (every loss.r1_interval
    steps; at interval 1 they are part of Dmain's loss instead), Gmain."""
    phases = [Phase("Dmain", "D")]
    if loss_cfg is not None and lazy_penalties(loss_cfg):
        phases.append(Phase("Dreg", "D", interval=loss_cfg.r1_interval))
    phases.append(Phase("Gmain", "G"))
    return Schedule(
        phases=tuple(phases),
        n_critic=schedule_cfg.n_critic,
        ema_halflife_steps=schedule_cfg.ema_halflife_steps,
        ema_rampup=schedule_cfg.ema_rampup,
    )


def lazy_penalties(loss_cfg) -> bool:
    """Whether R1/R2 run in a phase of their own (Dreg) every loss.r1_interval > 1 steps."""
    return loss_cfg.penalized and loss_cfg.r1_interval > 1


def lazy_regularization(interval: int) -> float:
    """Lazy regularization applies a regularizer every `interval` minibatches; to keep the
    optimizer's dynamics, its lr and betas are raised to the power c = k / (k + 1)
    (Karras et al. 2020, StyleGAN2, Appendix B): lr * c, beta ** c."""
    return interval / (interval + 1) if interval > 1 else 1.0


def lr_at(base_lr: float, step: int, decay: str = "none", start: int = 0, end: int = 0) -> float:
    """Learning rate at `step`, a pure function of the step: `base_lr` until `start`, then
    falling to 0 at `end` along `decay` ("none": constant, "linear", "cosine")."""
    if decay == "none" or step <= start:
        return base_lr
    t = min(1.0, (step - start) / max(1, end - start))
    if decay == "linear":
        return base_lr * (1.0 - t)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def describe(schedule: Schedule, steps: int = 3) -> list[str]:
    """The first steps of the schedule, for --dry-run."""
    return [f"step {s}: " + ", ".join(p.name for p in schedule.phases_at(s)) for s in range(steps)]
