"""The relativistic standard GAN loss (RSGAN; Jolicoeur-Martineau 2019, "The relativistic
discriminator: a key element missing from standard GAN", section 4.1).

D estimates how much more realistic a real sample is than a fake one: with C the critic's
raw output (D's logit), D minimises E[-log sigmoid(C(x_r) - C(x_f))] and G minimises
E[-log sigmoid(C(x_f) - C(x_r))], over pairs of a real and a fake sample (the i-th of each
batch). -log sigmoid(t) = softplus(-t) keeps both stable for large logits.

G's term needs D's logits on reals too: `g_uses_real=True` asks gan-dist's G step to run D
(frozen, without gradients) on the step's real batch and pass them as the second argument.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gan_dist.losses import AdversarialLoss


def d_relativistic(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.softplus(-(real_logits - fake_logits)).mean()


def g_relativistic(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    return F.softplus(-(fake_logits - real_logits)).mean()


relativistic = AdversarialLoss(d_loss=d_relativistic, g_loss=g_relativistic, g_uses_real=True)
