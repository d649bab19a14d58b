"""Auxiliary classification (AC-GAN, Odena et al. 2017) on a projection D's class scores.

A projection D (Miyato & Koyama 2018) scores each class as embed(c).h(x); read over all
classes those scores are a classifier's logits. D learns them as a classifier of real
images, and G is pulled towards images that D classifies as the class asked for, as in
P2GAN (Han et al. 2021), which adds this term to the projection game.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_loss(class_logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of [N, num_classes] class scores against the labels."""
    return F.cross_entropy(class_logits.float(), y.long())
