"""Adversarial terms on D's logits.

Each loss gives D's loss from (logits on real, logits on fake) and G's loss
from logits on fake. Means over the batch; `softplus` keeps the BCE forms
stable for large logits: -log sigmoid(x) = softplus(-x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AdversarialLoss:
    """D's loss from (logits on real, logits on fake) and G's from logits on fake, each a
    scalar tensor. With `g_uses_real` G's loss is g_loss(fake_logits, real_logits), for the
    relativistic losses: the G step then also runs D (frozen, without gradients) on the
    step's real batch."""

    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[..., Tensor]
    g_uses_real: bool = False

    def g_term(self, fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
        return self.g_loss(fake_logits, real_logits) if self.g_uses_real else self.g_loss(fake_logits)


def _d_bce(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # -log D(x) - log(1 - D(G(z))), D = sigmoid(logit).
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def _g_minimax(fake_logits: Tensor) -> Tensor:
    # G minimises log(1 - D(G(z))): the original game, whose gradient vanishes when D wins.
    return -F.softplus(fake_logits).mean()


def _g_nonsaturating(fake_logits: Tensor) -> Tensor:
    # G maximises log D(G(z)) instead (Goodfellow et al. 2014, section 3).
    return F.softplus(-fake_logits).mean()


def _d_wasserstein(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # The critic estimates W1 as E[D(x)] - E[D(G(z))] (Arjovsky et al. 2017); it needs a
    # Lipschitz constraint: a gradient penalty (loss.gp_weight) or spectral norm.
    return fake_logits.mean() - real_logits.mean()


def _g_wasserstein(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def _d_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # Lim & Ye 2017; Miyato et al. 2018 (SN-GAN).
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def _d_least_squares(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # LSGAN (Mao et al. 2017) with the 0-1 coding: D pulls real to 1 and fake to 0, G fake to 1.
    return 0.5 * ((real_logits - 1) ** 2).mean() + 0.5 * (fake_logits ** 2).mean()


def _g_least_squares(fake_logits: Tensor) -> Tensor:
    return 0.5 * ((fake_logits - 1) ** 2).mean()


def _d_rpgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # The relativistic pairing GAN (Jolicoeur-Martineau 2019; Huang et al. 2024, R3GAN, eq. 2):
    # D is asked that each real sample score above the fake it is paired with, element by
    # element in the batch: E[f(D(x_fake) - D(x_real))] with f(t) = softplus(t). Paired, not
    # averaged (RaGAN), so that every real sample has a fake to beat: this is what keeps the
    # loss from dropping modes.
    return F.softplus(-(real_logits - fake_logits)).mean()


def _g_rpgan(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    # The mirror term: each fake is pushed to score above its paired real.
    return F.softplus(-(fake_logits - real_logits)).mean()


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(_d_bce, _g_minimax),
    "nonsaturating": AdversarialLoss(_d_bce, _g_nonsaturating),
    "wasserstein": AdversarialLoss(_d_wasserstein, _g_wasserstein),
    "hinge": AdversarialLoss(_d_hinge, _g_wasserstein),
    "least_squares": AdversarialLoss(_d_least_squares, _g_least_squares),
    "rpgan": AdversarialLoss(_d_rpgan, _g_rpgan, g_uses_real=True),
}


@torch.no_grad()
def d_stats(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """Cheap per-step signals of the game's balance (no host sync: tensors stay on device).
    `d_output_gap` comes from the interval's means (`d_interval_stats`)."""
    d_real, d_fake = real_logits.mean(), fake_logits.mean()
    return {
        "d_real": d_real,
        "d_fake": d_fake,
        # The decision threshold is 0 for the logit losses and the critics, 0.5 for least squares;
        # 0 is used throughout so the metric means the same across losses.
        "d_acc_real": (real_logits > 0).mean(dtype=torch.float32),
        "d_acc_fake": (fake_logits < 0).mean(dtype=torch.float32),
    }


def d_interval_stats(means: dict[str, Tensor]) -> dict[str, Tensor]:
    """What a log interval's means of `d_stats` give without a kernel a step: d_output_gap,
    d_real - d_fake (the mean of a difference is the difference of the means)."""
    return {"d_output_gap": means["d_real"] - means["d_fake"]} if "d_real" in means else {}
