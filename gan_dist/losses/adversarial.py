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
    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]


def _d_bce(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # -log D(x) - log(1 - D(G(z))), D = sigmoid(logit).
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def _g_minimax(fake_logits: Tensor) -> Tensor:
    # G minimises log(1 - D(G(z))): the original game, whose gradient vanishes when D wins.
    return -F.softplus(fake_logits).mean()


def _g_nonsaturating(fake_logits: Tensor) -> Tensor:
    # G maximises log D(G(z)) instead (Goodfellow et al. 2014, section 3).
    return F.softplus(-fake_logits).mean()


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(_d_bce, _g_minimax),
    "nonsaturating": AdversarialLoss(_d_bce, _g_nonsaturating),
}


@torch.no_grad()
def d_stats(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """Cheap per-step signals of the game's balance (no host sync: tensors stay on device)."""
    return {
        "d_real": real_logits.mean(),
        "d_fake": fake_logits.mean(),
        "d_acc_real": (real_logits > 0).float().mean(),
        "d_acc_fake": (fake_logits < 0).float().mean(),
        "d_output_gap": real_logits.mean() - fake_logits.mean(),
    }
