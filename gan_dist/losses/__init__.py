"""Loss math: functions of tensors that return a loss tensor and a stats dict.

They never step an optimizer or ask for a rank; the trainer schedules them.
"""

from gan_dist.losses.adversarial import ADVERSARIAL_LOSSES, AdversarialLoss, d_stats

__all__ = ["ADVERSARIAL_LOSSES", "AdversarialLoss", "d_stats"]
