"""Loss math: functions of tensors that return a loss tensor and a stats dict.

They never step an optimizer or ask for a rank; the trainer schedules them.
`loss.kind` is a built-in name (ADVERSARIAL_LOSSES), an entry point of the group
`gan_dist.losses`, or a `module:attr` path naming an AdversarialLoss
(gan_dist.plugins); gan_dist.plan checks at start-up that its terms are scalars.
"""

from gan_dist import plugins
from gan_dist.losses.adversarial import ADVERSARIAL_LOSSES, AdversarialLoss, d_interval_stats, d_stats
from gan_dist.losses.auxiliary import class_loss
from gan_dist.losses.regularizers import (AUGMENTATIONS, diff_augment, gradient_penalty, interpolate, r1_penalty,
                                          r2_penalty)


def check_loss_kind(kind: str) -> None:
    """`kind` names a built-in, an installed entry point or a module:attr path (imports nothing)."""
    plugins.check_name("loss.kind", kind, plugins.LOSS_GROUP, ADVERSARIAL_LOSSES)


def loss_label(kind: str) -> str:
    """`kind` for a message: a plug-in's entry point also names the object it points to."""
    return kind if kind in ADVERSARIAL_LOSSES else plugins.load("loss.kind", kind, plugins.LOSS_GROUP).label


def adversarial_loss(kind: str) -> AdversarialLoss:
    """The adversarial loss `loss.kind` names: a built-in, or a plug-in's AdversarialLoss."""
    if kind in ADVERSARIAL_LOSSES:
        return ADVERSARIAL_LOSSES[kind]
    plugin = plugins.load("loss.kind", kind, plugins.LOSS_GROUP)
    if not isinstance(plugin.obj, AdversarialLoss):
        raise plugins.PluginError(f"loss.kind {plugin.label} is a {type(plugin.obj).__name__}, not a "
                                  f"gan_dist.losses.AdversarialLoss(d_loss, g_loss)")
    return plugin.obj


__all__ = ["ADVERSARIAL_LOSSES", "AUGMENTATIONS", "AdversarialLoss", "adversarial_loss", "check_loss_kind",
           "class_loss", "d_interval_stats", "d_stats", "diff_augment", "gradient_penalty", "interpolate",
           "loss_label", "r1_penalty", "r2_penalty"]
