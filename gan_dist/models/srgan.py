"""SRGAN (Ledig et al. 2017): an SRResNet generator and a VGG-style discriminator.

G maps a low-resolution image to one `scale` times larger: a 9x9 conv,
residual blocks (conv-BN-PReLU-conv-BN), a long skip, then x2 pixel-shuffle
upsampling blocks and a 9x9 conv (tanh, as the data lives in [-1, 1]).
D: 3x3 convs whose stride alternates 1 and 2 while the width doubles, then a
global pool and a small dense head to one logit. `vgg19_features` rebuilds
torchvision's VGG19 feature stack, so a user-supplied local weights file of
it can drive the perceptual loss without torchvision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dist.models.layers import apply_spectral_norm, d_norm


def downsample(hr_img: Tensor, scale: int) -> Tensor:
    """The low-resolution input of super-resolution, made on the fly (bicubic, antialiased)."""
    return F.interpolate(hr_img, scale_factor=1 / scale, mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        # No conv biases before BatchNorm: BN cancels them (their true gradient is zero).
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.PReLU(width), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        return x + self.body(x)


class SRResNet(nn.Module):
    """Ledig et al.'s generator. With `bicubic_skip`, G learns only what bicubic upscaling misses
    (the global residual of Kim et al.'s VDSR, 2016): its output is bicubic(lr) + tail(...), the
    tail has no tanh, and it starts near zero, so G starts at bicubic's quality instead of below it."""

    def __init__(self, channels: int, width: int, blocks: int, scale: int, bicubic_skip: bool = False):
        super().__init__()
        self.scale = scale
        self.bicubic_skip = bicubic_skip
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, 1, 4), nn.PReLU(width))
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)],
                                    nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        up = []
        for _ in range(int(math.log2(scale))):
            up += [nn.Conv2d(width, width * 4, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(width)]
        self.upsample = nn.Sequential(*up)
        if bicubic_skip:
            last = nn.Conv2d(width, channels, 9, 1, 4)
            # A small start: the residual is near zero, and G's first output is close to bicubic.
            with torch.no_grad():
                last.weight.mul_(0.1)
                last.bias.zero_()
            self.tail = last
        else:
            self.tail = nn.Sequential(nn.Conv2d(width, channels, 9, 1, 4), nn.Tanh())

    def forward(self, lr_img):
        h = self.head(lr_img)
        out = self.tail(self.upsample(h + self.blocks(h)))
        if self.bicubic_skip:
            # Not clamped here (a clamp would stop the gradient of every pixel beyond [-1, 1]);
            # the evaluation, the sample grids and the image writers clamp.
            out = out + F.interpolate(lr_img, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


class SRDiscriminator(nn.Module):
    def __init__(self, channels: int, width: int, spectral: bool = False, batchnorm: bool = True):
        super().__init__()
        use_norm = batchnorm and not spectral
        layers = [nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i, (out, stride) in enumerate([(width, 2), (width * 2, 1), (width * 2, 2), (width * 4, 1),
                                           (width * 4, 2), (width * 8, 1), (width * 8, 2)]):
            layers += [nn.Conv2d(c, out, 3, stride, 1, bias=not use_norm), d_norm(out, use_norm),
                       nn.LeakyReLU(0.2, True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, width * 16),
                                  nn.LeakyReLU(0.2, True), nn.Linear(width * 16, 1))
        if spectral:
            apply_spectral_norm(self)

    def forward(self, x, y=None):
        return self.head(self.features(x)).squeeze(1)


def build_srgan(cfg, shape):
    if shape.kind != "image":
        raise ValueError(f"srgan needs image data, the data holds {shape.kind}")
    channels, height, width = shape.sample_shape
    scale = cfg.sr_scale
    if scale not in (2, 4, 8):
        raise ValueError(f"model.sr_scale must be 2, 4 or 8, got {scale}")
    if height % scale or width % scale:
        raise ValueError(f"model.sr_scale {scale} does not divide the data's {height}x{width} HR images: the LR "
                         f"input must have whole pixels (pack crops whose side is a multiple of {scale})")
    if height // scale < 4 or width // scale < 4:
        raise ValueError(f"the data's {height}x{width} HR images are too small for x{scale}: their LR input "
                         f"would be under 4x4 pixels")
    G = SRResNet(channels, cfg.channels, cfg.sr_blocks, scale, bicubic_skip=cfg.sr_bicubic_skip)
    D = SRDiscriminator(channels, cfg.channels, spectral=cfg.spectral_norm, batchnorm=cfg.d_batchnorm)
    return G, D


# torchvision's vgg19().features layout: (out channels) per conv, "M" for max-pool.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def vgg19_features(layers: int = 36) -> nn.Sequential:
    """The first `layers` modules of torchvision's VGG19 `features` (36: up to relu5_4)."""
    modules, c = [], 3
    for v in _VGG19:
        if v == "M":
            modules.append(nn.MaxPool2d(2, 2))
        else:
            modules += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*modules[:layers])


def load_vgg19_features(path: str, layers: int = 36) -> nn.Module:
    """VGG19 features from a local state dict (torchvision's keys, with or without `features.`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    net = vgg19_features(layers)
    wanted = net.state_dict().keys()
    net.load_state_dict({k: v for k, v in state.items() if k in wanted})
    return net.eval().requires_grad_(False)
