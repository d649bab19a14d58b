"""Building blocks shared by the convolutional models."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (de Vries et al. 2017)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class CondSequential(nn.Sequential):
    """A Sequential that hands the class labels to the layers that take them."""

    def forward(self, x, y=None):
        for layer in self:
            x = layer(x, y) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


def d_norm(num_features: int, use_norm: bool) -> nn.Module:
    """BatchNorm for D, without running statistics: D only ever runs in training mode,
    and rank-local running statistics would make the replicas differ."""
    return nn.BatchNorm2d(num_features, track_running_stats=False) if use_norm else nn.Identity()


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every conv, linear and embedding weight."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


def dcgan_init(module: nn.Module) -> None:
    """Weights from N(0, 0.02), BatchNorm gains from N(1, 0.02) (Radford et al. 2016)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def num_doublings(image_size: int, arch: str) -> int:
    """How many x2 steps take a 4x4 map to `image_size`; other sizes are a ValueError."""
    steps = image_size.bit_length() - 3
    if image_size < 16 or image_size != 4 * 2**steps:
        raise ValueError(f"{arch} cannot make {image_size}x{image_size} images (a power of two >= 16 is needed)")
    return steps


def to_labels(y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    if y is None:
        raise ValueError("a conditional model needs class labels")
    return y.long().clamp(0, num_classes - 1)
