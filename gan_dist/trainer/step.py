"""One training step: n_critic D updates, one G update, one G_ema update.

Read it top to bottom; the schedule decides which phases run. Statistics stay
on the device as tensors; the loop reads them once per log interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gan_dist.losses import AdversarialLoss, d_stats
from gan_dist.runtime import Runtime
from gan_dist.schedule import Schedule, lr_at
from gan_dist.trainer.ema import ema_update
from gan_dist.trainer.state import TrainState


@dataclass(frozen=True)
class StepContext:
    """What a step needs besides the state: fixed for the whole run."""

    loss: AdversarialLoss
    schedule: Schedule
    batch_size: int  # per rank
    z_dim: int
    lr_g: float
    lr_d: float


def sample_z(st: TrainState, n: int, z_dim: int, device) -> Tensor:
    return torch.randn(n, z_dim, device=device, generator=st.noise)


def grad_norm(params) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train_step(st: TrainState, rt: Runtime, ctx: StepContext, next_real) -> dict[str, Tensor]:
    """Run the phases of step `st.step`; `next_real()` returns this rank's next real batch."""
    stats: dict[str, Tensor] = {}
    for group in st.opt_G.param_groups:
        group["lr"] = lr_at(ctx.lr_g, st.step)
    for group in st.opt_D.param_groups:
        group["lr"] = lr_at(ctx.lr_d, st.step)

    for phase in ctx.schedule.phases_at(st.step):
        if phase.name == "Dmain":
            # Update D. G runs unwrapped without grad: the D step never touches G.
            real = next_real()
            z = sample_z(st, ctx.batch_size, ctx.z_dim, rt.device)
            with torch.no_grad():
                fake = st.G(z)
            # One forward over real and fake together: one DDP forward per backward.
            logits = st.D_ddp(torch.cat([real, fake]))
            real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
            loss_D = ctx.loss.d_loss(real_logits, fake_logits)
            st.opt_D.zero_grad(set_to_none=True)
            rt.backward(loss_D)  # collective: all-reduce of D's gradients
            stats["grad_norm_d"] = grad_norm(st.D.parameters())
            st.opt_D.step()
            stats["loss_d"] = loss_D.detach()
            stats.update(d_stats(real_logits.detach(), fake_logits.detach()))
        elif phase.name == "Gmain":
            # Update G. D runs unwrapped with frozen weights: gradients flow through D
            # to G, but D gets none, so the G step all-reduces only G's gradients.
            z = sample_z(st, ctx.batch_size, ctx.z_dim, rt.device)
            st.D.requires_grad_(False)
            fake_logits = st.D(st.G_ddp(z))
            loss_G = ctx.loss.g_loss(fake_logits)
            st.opt_G.zero_grad(set_to_none=True)
            rt.backward(loss_G)  # collective: all-reduce of G's gradients
            stats["grad_norm_g"] = grad_norm(st.G.parameters())
            st.opt_G.step()
            st.D.requires_grad_(True)
            stats["loss_g"] = loss_G.detach()
        else:
            raise ValueError(f"no implementation for phase {phase.name}")

    # Update G_ema.
    ema_update(st.G_ema, st.G, ctx.schedule.ema_beta(st.step))
    st.step += 1
    return stats
