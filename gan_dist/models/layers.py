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


def base_and_doublings(image_size: int, arch: str) -> tuple[int, int]:
    """The base map size b (3 to 7) and the number of x2 steps k >= 2 with b * 2**k = image_size,
    the most steps first: 32 = 4 x 2**3, 28 = 7 x 2**2, 48 = 3 x 2**4. Other sizes (below 12,
    or odd ones such as 44 = 11 x 4) are a ValueError."""
    for steps in range(image_size.bit_length(), 1, -1):
        base, rest = divmod(image_size, 2**steps)
        if rest == 0 and 3 <= base <= 7:
            return base, steps
    raise ValueError(f"{arch} cannot make {image_size}x{image_size} images: it needs b x 2**k pixels with b "
                     f"from 3 to 7 and k >= 2 (12, 16, 20, 24, 28, 32, 48, 64, ...); pack the data with "
                     f"`gan-dist data pack --size N` for another size")


def to_labels(y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    if y is None:
        raise ValueError("a conditional model needs class labels")
    return y.long().clamp(0, num_classes - 1)
