"""The training schedule as data: which phases run at a step, lr and EMA decay.

Everything here is a pure function of the step and the config, so every rank
computes the same schedule without talking to the others. One training step is
one G update preceded by `n_critic` D updates, each on a fresh real batch
(WGAN counts "generator iterations" the same way).
"""

from __future__ import annotations

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
        d_phases = [p for p in self.phases if p.net == "D" and p.active(step)]
        for _ in range(self.n_critic):
            run += d_phases
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


def build_schedule(schedule_cfg) -> Schedule:
    phases = (Phase("Dmain", "D"), Phase("Gmain", "G"))
    return Schedule(
        phases=phases,
        n_critic=schedule_cfg.n_critic,
        ema_halflife_steps=schedule_cfg.ema_halflife_steps,
        ema_rampup=schedule_cfg.ema_rampup,
    )


def lr_at(base_lr: float, step: int) -> float:
    """Learning rate at `step`: constant for now, a pure function of the step by contract."""
    return base_lr


def describe(schedule: Schedule, steps: int = 3) -> list[str]:
    """The first steps of the schedule, for --dry-run."""
    return [f"step {s}: " + ", ".join(p.name for p in schedule.phases_at(s)) for s in range(steps)]
