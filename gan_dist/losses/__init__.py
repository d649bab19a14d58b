"""Loss math: functions of tensors that return a loss tensor and a stats dict.

They never step an optimizer or ask for a rank; the trainer schedules them.
"""

from gan_dist.losses.adversarial import ADVERSARIAL_LOSSES, AdversarialLoss, d_interval_stats, d_stats
from gan_dist.losses.auxiliary import class_loss
from gan_dist.losses.regularizers import (AUGMENTATIONS, diff_augment, gradient_penalty, interpolate, r1_penalty,
                                          r2_penalty)

__all__ = ["ADVERSARIAL_LOSSES", "AUGMENTATIONS", "AdversarialLoss", "class_loss", "d_interval_stats", "d_stats",
           "diff_augment", "gradient_penalty", "interpolate", "r1_penalty", "r2_penalty"]
