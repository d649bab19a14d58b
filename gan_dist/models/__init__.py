"""Model registry: an architecture name -> a builder of (G, D).

Models know nothing about distribution: this package imports neither
accelerate, ray nor torch.distributed (a test enforces it). Wrapping happens
from outside, and the unwrapped modules are what EMA and checkpoints use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from gan_dist.models.mlp import ACTIVATIONS, build_mlp_gan


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data, read from the dataset's index."""

    kind: str  # "points" (vectors) or "image"
    sample_shape: tuple[int, ...]
    num_classes: int = 0


Builder = Callable[..., tuple[nn.Module, nn.Module]]

ARCHITECTURES: dict[str, Builder] = {
    "mlp": build_mlp_gan,
}


def build_models(model_cfg, shape: DataShape) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model_cfg.arch` on data of `shape`; a mismatch is a ValueError."""
    return ARCHITECTURES[model_cfg.arch](model_cfg, shape)


__all__ = ["ACTIVATIONS", "ARCHITECTURES", "DataShape", "build_models"]
