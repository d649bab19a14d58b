"""The training schedule as data: which phases run at a step, lr and EMA decay.

Everything here is a pure function of the step and the config, so every rank
computes the same schedule without talking to the others. One training step is
one G update preceded by `n_critic` D updates, each on a fresh real batch
(WGAN counts "generator iterations" the same way).

Two ways to schedule the hyper-parameters: by steps (`lr_at`, `Schedule.ema_beta`
from a half-life in steps), or by images seen (`CosineSchedule`, R3GAN's), where
step s has seen s x the global batch images, whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str  # Dmain, Dreg, Gmain, Gcontent
    net: str  # "D" or "G"
    interval: int = 1  # runs when step % interval == 0

    def active(self, step: int) -> bool:
        return step % self.interval == 0


def cosine_between(start: float, end: float, t: float) -> float:
    """A half cosine from `start` at t = 0 to `end` at t >= 1 (flat at both ends)."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class CosineSchedule:
    """Hyper-parameters measured in images seen (R3GAN, Huang et al. 2024, App. B): each moves
    along a half cosine from its start to its end over `images`, then stays. The images seen after
    step s are s x `global_batch`, a pure function of the step and the global batch: a run keeps
    its schedules on any number of workers, and when resumed on another."""

    images: float  # the horizon
    global_batch: int
    lr_end_factor: float = 1.0  # both lrs at the end over their start
    beta2: tuple[float, float] | None = None  # Adam's beta2, start and end; None: the optimizers' own
    gamma_end_factor: float = 1.0  # R1's and R2's gamma at the end over their start
    ema_halflife_images: float = 0.0  # G_ema's half-life at the end (from 0: the ramp-up); 0: off
    augment_p: tuple[float, float] = (1.0, 1.0)  # the augmentation probability, start and end

    def progress(self, step: int) -> float:
        """The fraction of the horizon seen after `step` G steps."""
        return step * self.global_batch / self.images

    def lr_factor(self, step: int) -> float:
        return cosine_between(1.0, self.lr_end_factor, self.progress(step))

    def beta2_at(self, step: int) -> float | None:
        return None if self.beta2 is None else cosine_between(*self.beta2, self.progress(step))

    def gamma_factor(self, step: int) -> float:
        return cosine_between(1.0, self.gamma_end_factor, self.progress(step))

    def augment_p_at(self, step: int) -> float:
        return cosine_between(*self.augment_p, self.progress(step))

    def ema_beta(self, step: int) -> float:
        """G_ema's decay at `step`: a half-life of h images is 0.5 ** (global batch / h) per step
        (StyleGAN's ema_kimg in images), h growing from 0, where G_ema is G's copy."""
        halflife = cosine_between(0.0, self.ema_halflife_images, self.progress(step))
        return 0.5 ** (self.global_batch / halflife) if halflife > 0 else 0.0


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]
    n_critic: int
    ema_halflife_steps: float
    ema_rampup: float
    cosine: CosineSchedule | None = None  # schedules in images seen; None: by steps
    # Super-resolution's SRResNet phase: before this step only Gcontent runs (G on a fresh real
    # batch, content loss alone); from it on, the adversarial phases.
    srresnet_steps: int = 0

    def phases_at(self, step: int) -> list[Phase]:
        """Phases run at `step`, in order: D phases n_critic times, then G phases (in the
        SRResNet phase of super-resolution, Gcontent alone)."""
        if step < self.srresnet_steps:
            return [CONTENT_PHASE]
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
        so early G_ema tracks G closely (as stylegan2-ada's ema_rampup does with kimg); or,
        with a half-life in images, the cosine schedule's."""
        if self.cosine is not None and self.cosine.ema_halflife_images > 0:
            return self.cosine.ema_beta(step)
        halflife = self.ema_halflife_steps
        if self.ema_rampup > 0:
            halflife = min(halflife, (step + 1) * self.ema_rampup)
        if halflife <= 0:
            return 0.0
        return 0.5 ** (1.0 / halflife)

    def lr_factor(self, step: int) -> float:
        """Both lrs' factor from the schedule in images (1 without one; optim.lr_decay is lr_at's)."""
        return self.cosine.lr_factor(step) if self.cosine is not None else 1.0

    def beta2_at(self, step: int) -> float | None:
        """Adam's beta2 at `step`, or None: the optimizers keep their own."""
        return self.cosine.beta2_at(step) if self.cosine is not None else None

    def gamma_factor(self, step: int) -> float:
        """R1's and R2's gamma at `step` over their configured value."""
        return self.cosine.gamma_factor(step) if self.cosine is not None else 1.0

    def augment_p_at(self, step: int, constant: float) -> float:
        """The augmentation probability at `step` (`constant` without a schedule in images)."""
        return self.cosine.augment_p_at(step) if self.cosine is not None else constant


CONTENT_PHASE = Phase("Gcontent", "G")


def build_schedule(schedule_cfg, loss_cfg=None, cosine: CosineSchedule | None = None) -> Schedule:
    """The phases: Dmain (n_critic times), Dreg when R1 or R2 is lazy (every loss.r1_interval
    steps; at interval 1 they are part of Dmain's loss instead), Gmain; before
    schedule.srresnet_steps, Gcontent alone."""
    phases = [Phase("Dmain", "D")]
    if loss_cfg is not None and lazy_penalties(loss_cfg):
        phases.append(Phase("Dreg", "D", interval=loss_cfg.r1_interval))
    phases.append(Phase("Gmain", "G"))
    return Schedule(
        phases=tuple(phases),
        n_critic=schedule_cfg.n_critic,
        ema_halflife_steps=schedule_cfg.ema_halflife_steps,
        ema_rampup=schedule_cfg.ema_rampup,
        cosine=cosine,
        srresnet_steps=schedule_cfg.srresnet_steps,
    )


def lazy_penalties(loss_cfg) -> bool:
    """Whether R1/R2 run in a phase of their own (Dreg) every loss.r1_interval > 1 steps."""
    return loss_cfg.penalized and loss_cfg.r1_interval > 1


def build_cosine(cosine_cfg, optim_cfg, loss_cfg, global_batch: int) -> CosineSchedule | None:
    """The schedules in images of config section `cosine` (None when cosine.images is 0)."""
    if not cosine_cfg.images:
        return None
    beta2 = None if cosine_cfg.beta2_end == -1 else (optim_cfg.beta2, cosine_cfg.beta2_end)
    p_end = loss_cfg.augment_p if cosine_cfg.augment_p_end == -1 else cosine_cfg.augment_p_end
    return CosineSchedule(images=cosine_cfg.images, global_batch=global_batch,
                          lr_end_factor=cosine_cfg.lr_end_factor, beta2=beta2,
                          gamma_end_factor=cosine_cfg.gamma_end_factor,
                          ema_halflife_images=cosine_cfg.ema_halflife_images,
                          augment_p=(loss_cfg.augment_p, p_end))


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


def describe_cosine(cosine: CosineSchedule) -> str:
    """The schedules in images, for --dry-run."""
    steps = math.ceil(cosine.images / cosine.global_batch)
    parts = [f"lr x1 -> x{cosine.lr_end_factor:g}"]
    if cosine.beta2 is not None:
        parts.append(f"beta2 {cosine.beta2[0]:g} -> {cosine.beta2[1]:g}")
    parts.append(f"gamma x1 -> x{cosine.gamma_end_factor:g}")
    if cosine.ema_halflife_images:
        parts.append(f"G_ema half-life 0 -> {cosine.ema_halflife_images:,.0f} images")
    if cosine.augment_p[0] != cosine.augment_p[1]:
        parts.append(f"augment p {cosine.augment_p[0]:g} -> {cosine.augment_p[1]:g}")
    return (f"cosine over {cosine.images:,.0f} images ({steps:,} steps of {cosine.global_batch}): "
            + ", ".join(parts))


def describe(schedule: Schedule, steps: int = 3) -> list[str]:
    """The first steps of the schedule, for --dry-run."""
    lines = [f"step {s}: " + ", ".join(p.name for p in schedule.phases_at(s)) for s in range(steps)]
    if schedule.srresnet_steps:
        s = schedule.srresnet_steps
        lines.append(f"step {s}: " + ", ".join(p.name for p in schedule.phases_at(s)) + " (the SRGAN phase)")
    return lines
