"""Model registry: an architecture name -> a builder of (G, D).

Models know nothing about distribution: this package imports neither
accelerate, ray nor torch.distributed (a test enforces it). Wrapping happens
from outside, and the unwrapped modules are what EMA and checkpoints use.

Every G takes `(z, y=None)` except SRGAN's, which takes a low-resolution
image; every D takes `(x, y=None)` and returns one logit per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from gan_dist.models.dcgan import build_cgan, build_dcgan
from gan_dist.models.mlp import ACTIVATIONS, build_mlp_gan
from gan_dist.models.r3gan import build_r3gan, build_r3gan_cond
from gan_dist.models.srgan import build_srgan


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data, read from the dataset's index."""

    kind: str  # "points" (vectors) or "image"
    sample_shape: tuple[int, ...]
    num_classes: int = 0


Builder = Callable[..., tuple[nn.Module, nn.Module]]

ARCHITECTURES: dict[str, Builder] = {
    "mlp": build_mlp_gan,
    "dcgan": build_dcgan,
    "cgan": build_cgan,
    "srgan": build_srgan,
    "r3gan": build_r3gan,
    "r3gan_cond": build_r3gan_cond,
}

# How G is driven: from noise, from noise and a class, or from a low-resolution image.
TASKS = {"mlp": "unconditional", "dcgan": "unconditional", "cgan": "conditional", "srgan": "super_resolution",
         "r3gan": "unconditional", "r3gan_cond": "conditional"}


def build_models(model_cfg, shape: DataShape) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model_cfg.arch` on data of `shape`; a mismatch is a ValueError."""
    return ARCHITECTURES[model_cfg.arch](model_cfg, shape)


__all__ = ["ACTIVATIONS", "ARCHITECTURES", "DataShape", "TASKS", "build_models"]
