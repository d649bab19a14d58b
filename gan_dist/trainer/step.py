"""One training step: n_critic D updates (with their regularizers), one G update,
one G_ema update.

Read it top to bottom; the schedule decides which phases run. Statistics stay
on the device as tensors; the loop reads them once per log interval. The
DDP rules (FIELD-NOTES): D sees real, fake (and interpolates) in separate
forwards, so BatchNorm normalises each batch on its own exactly as in the G
step (D keeps no running statistics, so there are no buffers to desync, and
each weight's gradient still reaches DDP's all-reduce once); in the G step D runs unwrapped with
frozen weights, so D's gradients are neither computed nor all-reduced; the
penalties take input gradients with create_graph=True and add `0 * logits`
so that every D weight joins the all-reduce.

Each update runs over this rank's share of the global batch in `accumulation`
micro-batches (gan_dist.batching): every micro-batch's loss is divided by their
number and back-propagated inside DDP's no_sync but the last, so the gradients
add up locally and are all-reduced once; the gradient norm, the non-finite skip
and the optimizer step come once, after the last. A phase's statistics are the
means over its micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dist.losses import (AdversarialLoss, adversarial_loss, class_loss, d_stats, diff_augment,
                             gradient_penalty, interpolate, r1_penalty, r2_penalty)
from gan_dist.models import model_task
from gan_dist.models.srgan import downsample, load_vgg19_features
from gan_dist.runtime import Runtime
from gan_dist.schedule import Schedule, build_cosine, build_schedule, lr_at
from gan_dist.trainer.ema import ema_update
from gan_dist.trainer.state import TrainState, d_lazy_ratio


@dataclass(frozen=True)
class StepContext:
    """What a step needs besides the state: fixed for the whole run."""

    loss: AdversarialLoss
    schedule: Schedule
    batch_size: int  # per micro-batch on this rank
    z_dim: int
    lr_g: float
    lr_d: float  # with the lazy-regularization correction applied
    task: str = "unconditional"  # or "conditional", "super_resolution"
    gp_weight: float = 0.0
    r1_gamma: float = 0.0
    r1_interval: int = 1
    augment: tuple[str, ...] = ()
    sr_scale: int = 4
    content_weight: float = 1.0
    adversarial_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual: nn.Module | None = None  # frozen feature extractor for the perceptual loss
    skip_nonfinite: bool = True
    reuse_fake: bool = False  # the G step trains on the D step's fakes
    class_weight: float = 0.0  # auxiliary classification on a projection D's class scores
    lr_decay: tuple[str, int, int] = ("none", 0, 0)  # kind, first and last step (schedule.lr_at)
    r2_gamma: float = 0.0
    augment_p: float = 1.0  # each augmentation's probability per image (without a schedule in images)
    accumulation: int = 1  # micro-batches per update (gan_dist.batching)
    d_lazy: float = 1.0  # D's lr factor and betas' exponent under lazy R1/R2 (schedule.lazy_regularization)

    @property
    def penalties_in_dmain(self) -> bool:
        """R1/R2 at every D step, in D's loss (loss.r1_interval 1); lazy ones have a phase, Dreg."""
        return bool(self.r1_gamma or self.r2_gamma) and self.r1_interval == 1


def build_step_context(cfg, batch_size: int, device, accumulation: int = 1) -> StepContext:
    """The context of `cfg`'s steps, with micro-batches of `batch_size` samples on this rank,
    `accumulation` of them per update (the plan's split: micro_batch, accumulation)."""
    perceptual = None
    if cfg.loss.perceptual_weight > 0:
        perceptual = load_vgg19_features(cfg.loss.perceptual_weights).to(device)
    cosine = build_cosine(cfg.cosine, cfg.optim, cfg.loss, cfg.data.batch_size)
    return StepContext(
        loss=adversarial_loss(cfg.loss.kind), schedule=build_schedule(cfg.schedule, cfg.loss, cosine),
        batch_size=batch_size, z_dim=cfg.model.z_dim, lr_g=cfg.optim.lr_g, lr_d=cfg.optim.lr_d * d_lazy_ratio(cfg),
        task=model_task(cfg.model.arch), gp_weight=cfg.loss.gp_weight, r1_gamma=cfg.loss.r1_gamma,
        r1_interval=cfg.loss.r1_interval, augment=cfg.loss.augment_policy, sr_scale=cfg.model.sr_scale,
        content_weight=cfg.loss.content_weight, adversarial_weight=cfg.loss.adversarial_weight,
        perceptual_weight=cfg.loss.perceptual_weight, perceptual=perceptual,
        skip_nonfinite=cfg.train.skip_nonfinite, reuse_fake=cfg.schedule.reuse_fake,
        class_weight=cfg.loss.class_weight,
        lr_decay=(cfg.optim.lr_decay, int(cfg.optim.lr_decay_start * cfg.train.max_steps), cfg.train.max_steps),
        r2_gamma=cfg.loss.r2_gamma, augment_p=cfg.loss.augment_p, accumulation=accumulation,
        d_lazy=d_lazy_ratio(cfg))


class StepRng:
    """A step's random numbers (z, interpolation weights, augmentations), from this rank's generator."""

    def __init__(self, generator: torch.Generator, device):
        self.generator, self.device = generator, device

    def micro(self, k: int, count: int) -> "StepRng":
        """The random numbers of micro-batch k of `count`: this rank's stream, drawn in order.
        (The equivalence tests hand in a generator that gives each micro-batch the slice of the
        global batch a worker of its own would draw.)"""
        return self

    def randn(self, *shape) -> Tensor:
        return torch.randn(*shape, device=self.device, generator=self.generator)

    def rand(self, *shape) -> Tensor:
        return torch.rand(*shape, device=self.device, generator=self.generator)

    def randint(self, low: int, high: int, shape) -> Tensor:
        return torch.randint(low, high, shape, device=self.device, generator=self.generator)


def make_rng(st: TrainState, device) -> StepRng:
    return StepRng(st.noise, device)


def g_inputs(rng: StepRng, ctx: StepContext, real: Tensor, y: Tensor | None) -> tuple:
    if ctx.task == "super_resolution":
        return (downsample(real, ctx.sr_scale),)
    z = rng.randn(ctx.batch_size, ctx.z_dim)
    return (z, y) if ctx.task == "conditional" else (z,)


def augment(rng: StepRng, ctx: StepContext, x: Tensor, p: float = 1.0) -> Tensor:
    return diff_augment(x, ctx.augment, rng, p) if ctx.augment else x


def d_logits(D: nn.Module, x: Tensor, y: Tensor | None, classes: bool) -> tuple[Tensor, Tensor | None]:
    """D's logits in float and, when the classification loss needs them, its class scores."""
    logits, scores = D(x, y, classes=True) if classes else (D(x, y), None)
    return logits.float(), scores


def grad_norm(opt) -> Tensor:
    """The norm of the gradients of the weights `opt` updates (its own list: no module walk)."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def perceptual_features(net: nn.Module, x: Tensor) -> Tensor:
    # [-1, 1] images -> ImageNet-normalised RGB, as VGG19 was trained.
    x = (x + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = x.new_tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = x.new_tensor([0.229, 0.224, 0.225])[None, :, None, None]
    return net((x - mean) / std)


def content_losses(rt: Runtime, ctx: StepContext, fake: Tensor, real: Tensor, stats: dict) -> Tensor:
    """Super-resolution's content terms of G's loss: pixel MSE, and the VGG19 perceptual loss
    when weights were given (SRGAN's "VGG" variants)."""
    content = F.mse_loss(fake.float(), real.float())
    stats["content_loss"] = content.detach()
    loss = ctx.content_weight * content
    if ctx.perceptual is not None and ctx.perceptual_weight:
        with rt.autocast():
            perceptual = F.mse_loss(perceptual_features(ctx.perceptual, fake).float(),
                                    perceptual_features(ctx.perceptual, real).float())
        loss = loss + ctx.perceptual_weight * perceptual
        stats["perceptual_loss"] = perceptual.detach()
    return loss


def penalties(ctx: StepContext, gamma_factor: float, scale, real: Tensor | None, real_logits: Tensor | None,
              fake: Tensor | None, fake_logits: Tensor | None, stats: dict) -> Tensor:
    """gamma/2 x R1 on reals + gamma/2 x R2 on fakes (each where its gamma is set), with the input
    gradients taken with respect to D's un-augmented input (`real`, `fake` must require grad)."""
    loss = torch.zeros((), device=(real if real is not None else fake).device)
    if ctx.r1_gamma:
        r1 = r1_penalty(real_logits, real, scale)
        loss = loss + r1 * (ctx.r1_gamma * gamma_factor / 2)
        stats["r1_penalty"] = r1
    if ctx.r2_gamma:
        r2 = r2_penalty(fake_logits, fake, scale)
        loss = loss + r2 * (ctx.r2_gamma * gamma_factor / 2)
        stats["r2_penalty"] = r2
    return loss


def add_means(into: dict[str, Tensor], stats: dict[str, Tensor], count: int) -> None:
    """Add one micro-batch's statistics to its phase's: their mean over the `count` micro-batches."""
    for name, value in stats.items():
        value = value.detach() if count == 1 else value.detach() / count
        into[name] = into[name] + value if name in into else value


def set_beta2(opt, beta2: float, exponent: float) -> None:
    """Adam's beta2 for the next update (D's raised to the lazy-regularization exponent)."""
    for group in opt.param_groups:
        group["betas"] = (group["betas"][0], beta2 ** exponent)


def finish_update(st: TrainState, rt: Runtime, ctx: StepContext, opt, stats: dict, net: str) -> None:
    """After the last micro-batch's backward (and its all-reduce): gradient norm, and the
    optimizer step unless the update is not finite."""
    # fp16: the true gradients from here on (the norm must not carry the loss scale), and
    # the scaler's verdict on them. None without a scaler.
    overflow = rt.unscale_gradients(opt)
    norm = grad_norm(opt)
    stats[f"grad_norm_{net}"] = norm
    if overflow is not None:
        # The scaler's step skips the update (and halves the scale) on its own; every rank
        # holds the same all-reduced gradients, so every rank skips. Counted on the device.
        st.nonfinite += overflow
        opt.step()
        return
    if not ctx.skip_nonfinite:
        opt.step()
        return
    if rt.host_reads_are_free:
        # On a CPU one read decides (every rank reads the same all-reduced norm), and a finite
        # update, nearly every one, costs nothing more.
        if math.isfinite(norm.item()):
            opt.step()
        else:
            st.nonfinite += 1
        return
    # On a GPU: after the all-reduce every rank holds the same gradients, so every rank reaches the
    # same decision here without further communication. Decided and counted on the device
    # (with the fused Adam; an unfused one needs a host sync).
    nonfinite = ~torch.isfinite(norm)
    st.nonfinite += nonfinite
    rt.step_unless(opt, nonfinite)


def train_step(st: TrainState, rt: Runtime, ctx: StepContext, next_real) -> dict[str, Tensor]:
    """Run the phases of step `st.step`; `next_real()` returns this rank's next real micro-batch."""
    stats: dict[str, Tensor] = {}
    m = ctx.accumulation
    # The step's hyper-parameters: pure functions of the step (and, measured in images, of the
    # global batch), the same on every rank.
    lr_factor = ctx.schedule.lr_factor(st.step) * st.lr_scale
    for group in st.opt_G.param_groups:
        group["lr"] = lr_at(ctx.lr_g, st.step, *ctx.lr_decay) * lr_factor
    for group in st.opt_D.param_groups:
        group["lr"] = lr_at(ctx.lr_d, st.step, *ctx.lr_decay) * lr_factor
    beta2 = ctx.schedule.beta2_at(st.step)
    if beta2 is not None:
        set_beta2(st.opt_G, beta2, 1.0)
        set_beta2(st.opt_D, beta2, ctx.d_lazy)
    gamma_factor = ctx.schedule.gamma_factor(st.step)
    p = ctx.schedule.augment_p_at(st.step, ctx.augment_p)
    kept: list[tuple[Tensor, Tensor, Tensor | None]] = []  # the last D step's (real, fake, y) per micro-batch
    fakes_for_g: list[Tensor] = []
    rng = make_rng(st, rt.device)

    for phase in ctx.schedule.phases_at(st.step):
        phase_stats: dict[str, Tensor] = {}
        if phase.name == "Dmain":
            # Update D. G runs unwrapped without grad: the D step never touches G. Or, reusing
            # the fakes, G runs once for both updates and D learns from them detached.
            kept, fakes_for_g = [], []
            st.opt_D.zero_grad(set_to_none=True)
            for k in rt.micro_batches(m, st.D_ddp, *([st.G_ddp] if ctx.reuse_fake else [])):
                micro, mrng = {}, rng.micro(k, m)
                batch = next_real()
                real, y = batch["x"], batch.get("y")
                if ctx.reuse_fake:
                    with rt.autocast():
                        fakes_for_g.append(st.G_ddp(*g_inputs(mrng, ctx, real, y)))
                    fake = fakes_for_g[-1].detach().to(real.dtype)
                else:
                    with torch.no_grad(), rt.autocast():
                        fake = st.G(*g_inputs(mrng, ctx, real, y)).to(real.dtype)
                if ctx.penalties_in_dmain:
                    # R1/R2 take D's gradients with respect to its un-augmented input.
                    real = real.detach().requires_grad_(bool(ctx.r1_gamma))
                    fake = fake.detach().requires_grad_(bool(ctx.r2_gamma))
                real_a, fake_a = augment(mrng, ctx, real, p), augment(mrng, ctx, fake, p)
                with rt.autocast():
                    real_logits, real_classes = d_logits(st.D_ddp, real_a, y, classes=bool(ctx.class_weight))
                    fake_logits = st.D_ddp(fake_a, y).float()
                loss_D = ctx.loss.d_loss(real_logits, fake_logits)
                if ctx.class_weight:
                    # D learns the class scores as a classifier of real images only.
                    cls_d = class_loss(real_classes, y)
                    loss_D = loss_D + ctx.class_weight * cls_d
                    micro["class_loss_d"] = cls_d
                if ctx.gp_weight:
                    x_hat = interpolate(real_a, fake_a, mrng)
                    with rt.autocast():
                        hat_logits = st.D_ddp(x_hat, y).float()
                    gp = gradient_penalty(hat_logits, x_hat, rt.loss_scale())
                    loss_D = loss_D + ctx.gp_weight * gp
                    micro["gradient_penalty"] = gp
                if ctx.penalties_in_dmain:
                    loss_D = loss_D + penalties(ctx, gamma_factor, rt.loss_scale(), real, real_logits, fake,
                                                fake_logits, micro)
                rt.backward(loss_D if m == 1 else loss_D / m)  # collective at the last micro-batch
                micro["loss_d"] = loss_D
                micro.update(d_stats(real_logits.detach(), fake_logits.detach()))
                add_means(phase_stats, micro, m)
                kept.append((real.detach(), fake.detach(), y))
            finish_update(st, rt, ctx, st.opt_D, phase_stats, "d")

        elif phase.name == "Dreg":
            # Lazy R1/R2 on the last D step's batches, weighted by the interval (StyleGAN2, App. B).
            st.opt_D.zero_grad(set_to_none=True)
            for k in rt.micro_batches(m, st.D_ddp):
                micro, mrng = {}, rng.micro(k, m)
                real, fake, y = kept[k]
                real = real.detach().requires_grad_(True) if ctx.r1_gamma else None
                fake = fake.detach().requires_grad_(True) if ctx.r2_gamma else None
                with rt.autocast():
                    real_logits = st.D_ddp(augment(mrng, ctx, real, p), y).float() if ctx.r1_gamma else None
                    fake_logits = st.D_ddp(augment(mrng, ctx, fake, p), y).float() if ctx.r2_gamma else None
                loss_Dreg = penalties(ctx, gamma_factor, rt.loss_scale(), real, real_logits, fake, fake_logits, micro)
                # 0 x the logits: every D weight joins the all-reduce.
                touched = sum(logits.sum() for logits in (real_logits, fake_logits) if logits is not None)
                loss_Dreg = loss_Dreg * ctx.r1_interval + 0 * touched
                rt.backward(loss_Dreg if m == 1 else loss_Dreg / m)  # collective at the last micro-batch
                add_means(phase_stats, micro, m)
            finish_update(st, rt, ctx, st.opt_D, {}, "d")

        elif phase.name == "Gmain":
            # Update G. D runs unwrapped with frozen weights: gradients flow through D
            # to G, but D gets none, so the G step all-reduces only G's gradients.
            st.D.requires_grad_(False)
            st.opt_G.zero_grad(set_to_none=True)
            for k in rt.micro_batches(m, st.G_ddp):
                micro, mrng = {}, rng.micro(k, m)
                # A G step with no D step before it in this step (a schedule of G phases
                # alone) has no real batch: g_inputs then draws G's inputs alone.
                real, _, y = kept[k] if kept else (None, None, None)
                with rt.autocast():
                    fake = fakes_for_g[k] if ctx.reuse_fake else st.G_ddp(*g_inputs(mrng, ctx, real, y))
                    fake_logits, fake_classes = d_logits(st.D, augment(mrng, ctx, fake, p), y,
                                                         classes=bool(ctx.class_weight))
                real_logits = None
                if ctx.loss.g_uses_real:
                    # A relativistic G loss (rpgan's pairing too) compares each fake with the D step's
                    # real under the same D; no gradient flows to G through the reals, so D runs on
                    # them without one.
                    with torch.no_grad(), rt.autocast():
                        real_logits = st.D(augment(mrng, ctx, real, p), y).float()
                loss_G = ctx.adversarial_weight * ctx.loss.g_term(fake_logits, real_logits)
                if ctx.class_weight:
                    # G is pulled towards images that D classifies as the class asked for.
                    cls_g = class_loss(fake_classes, y)
                    loss_G = loss_G + ctx.class_weight * cls_g
                    micro["class_loss_g"] = cls_g
                if ctx.task == "super_resolution":
                    loss_G = loss_G + content_losses(rt, ctx, fake, real, micro)
                rt.backward(loss_G if m == 1 else loss_G / m)  # collective at the last micro-batch
                micro["loss_g"] = loss_G
                add_means(phase_stats, micro, m)
            finish_update(st, rt, ctx, st.opt_G, phase_stats, "g")
            st.D.requires_grad_(True)

        elif phase.name == "Gcontent":
            # SRResNet phase of super-resolution: G alone on fresh real micro-batches, the content
            # loss only; D and its optimizer are not touched (no D forward at all).
            st.opt_G.zero_grad(set_to_none=True)
            for k in rt.micro_batches(m, st.G_ddp):
                micro, mrng = {}, rng.micro(k, m)
                real = next_real()["x"]
                with rt.autocast():
                    fake = st.G_ddp(*g_inputs(mrng, ctx, real, None))
                loss_G = content_losses(rt, ctx, fake, real, micro)
                rt.backward(loss_G if m == 1 else loss_G / m)  # collective at the last micro-batch
                micro["loss_g"] = loss_G
                add_means(phase_stats, micro, m)
            finish_update(st, rt, ctx, st.opt_G, phase_stats, "g")
        else:
            raise ValueError(f"no implementation for phase {phase.name}")
        stats.update(phase_stats)

    # Update G_ema.
    ema_update(st.G_ema, st.G, ctx.schedule.ema_beta(st.step))
    st.step += 1
    return stats
