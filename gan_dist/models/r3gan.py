"""R3GAN's G and D (Huang, Gokaslan, Kuleshov and Tompkin 2024, "The GAN is dead; long live the
GAN! A Modern Baseline GAN", section 3, Config E), written from the paper.

G and D mirror each other: stages of residual blocks at 4x4, 8x8, ... up to the image size (G)
or down from it (D), joined by transition layers that resample by 2 with a [1, 2, 1] low-pass
filter and change the width with a 1x1 convolution.

- A block is ResNeXt's bottleneck turned inside out (ConvNeXt's inverted bottleneck): a 1x1
  convolution widens the stage's width by `expansion`, a grouped 3x3 convolution of `cardinality`
  groups mixes space, a 1x1 convolution narrows back, leaky ReLU (0.2) after the first two, and
  the result is added to the block's input. There is no normalisation layer anywhere.
- Fix-up initialisation (Zhang et al. 2019), which lets a deep ResNet train without
  normalisation: each block's last convolution starts at zero (every block is the identity at
  first), and the other two start from He's initialisation scaled by L^(-1/4), L the number of
  blocks of the network (Fixup's L^(-1/(2m-2)) for m = 3 layers a branch).
- G starts from a learned 4x4 basis: one learned 4x4 map per channel, each scaled by a linear
  function of z. D ends with the mirror image: a depthwise 4x4 convolution reduces each
  channel's 4x4 map to one number, then a linear layer gives the logit.
- Conditional (`r3gan_cond`): G gets a class embedding (as wide as z) concatenated to z; D a
  projection head (Miyato & Koyama 2018): the logit plus embed(y) . h(x).

G ends in a 1x1 convolution to the image's channels without tanh (the paper's G has none);
samples are clipped to [-1, 1] where they become pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dist.models.layers import to_labels

LEAK = 0.2  # leaky ReLU's slope


def lowpass(x: Tensor) -> Tensor:
    """The [1, 2, 1] / 4 filter along both axes, each channel alone, edges replicated (a constant
    image stays constant)."""
    taps = x.new_tensor([1.0, 2.0, 1.0])
    kernel = (taps[:, None] * taps[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def upsample(x: Tensor) -> Tensor:
    """x2: each pixel repeated 2x2, then the low-pass filter: bilinear interpolation, each new
    pixel 3/4 its own source and 1/4 the neighbour's along each axis."""
    return lowpass(F.interpolate(x, scale_factor=2, mode="nearest"))


def downsample(x: Tensor) -> Tensor:
    """/2: the low-pass filter, then the mean of each 2x2 block (upsample's mirror)."""
    return F.avg_pool2d(lowpass(x), 2)


def fixup_scaled(layer: nn.Conv2d, num_blocks: int) -> nn.Conv2d:
    """He's initialisation for leaky ReLU, scaled by num_blocks^(-1/4) (Fixup); bias 0."""
    nn.init.kaiming_normal_(layer.weight, a=LEAK, nonlinearity="leaky_relu")
    with torch.no_grad():
        layer.weight.mul_(num_blocks ** -0.25)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """x + 1x1(act(grouped 3x3(act(1x1(x))))), the last 1x1 starting at zero."""

    def __init__(self, width: int, expansion: int, cardinality: int, num_blocks: int):
        super().__init__()
        inner = width * expansion
        self.widen = fixup_scaled(nn.Conv2d(width, inner, 1), num_blocks)
        self.mix = fixup_scaled(nn.Conv2d(inner, inner, 3, padding=1, groups=cardinality), num_blocks)
        self.narrow = nn.Conv2d(inner, width, 1)
        nn.init.zeros_(self.narrow.weight)
        nn.init.zeros_(self.narrow.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.widen(x), LEAK)
        h = F.leaky_relu(self.mix(h), LEAK)
        return x + self.narrow(h)


class Transition(nn.Module):
    """Between two stages: resample by 2 and change the width with a 1x1 convolution (none when
    the widths agree), the convolution on the lower resolution side, where it costs a quarter."""

    def __init__(self, width_in: int, width_out: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(width_in, width_out, 1) if width_in != width_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return upsample(self.conv(x)) if self.up else self.conv(downsample(x))


def stage_widths(widths: tuple[int, ...], channels: int, image_size: int) -> tuple[int, ...]:
    """The width of each stage from 4x4 up to `image_size`; `widths` empty: `channels` everywhere."""
    stages = image_size.bit_length() - 2  # 4 -> 1 stage, 8 -> 2, 32 -> 4
    if image_size < 4 or image_size != 4 << (stages - 1):
        raise ValueError(f"r3gan makes 4 x 2**k pixel images (4, 8, 16, 32, 64, ...), not {image_size}x{image_size}; "
                         f"pack the data with `gan-dist data pack --size N` for another size")
    if widths and len(widths) != stages:
        raise ValueError(f"model.stage_widths has {len(widths)} widths, but {image_size}x{image_size} images need "
                         f"{stages} stages (4x4 to {image_size}x{image_size})")
    return widths or (channels,) * stages


def check_groups(widths: tuple[int, ...], expansion: int, cardinality: int) -> None:
    for width in widths:
        if (width * expansion) % cardinality:
            raise ValueError(f"model.cardinality {cardinality} does not divide a block's inner width "
                             f"{width} x model.expansion {expansion} = {width * expansion}")


class R3GANGenerator(nn.Module):
    def __init__(self, z_dim: int, widths: tuple[int, ...], blocks_per_stage: int, expansion: int,
                 cardinality: int, out_channels: int, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        num_blocks = blocks_per_stage * len(widths)
        if num_classes:
            self.embed = nn.Embedding(num_classes, z_dim)  # concatenated to z
        in_dim = z_dim * (2 if num_classes else 1)
        # The learned 4x4 basis, each channel scaled by a linear function of z.
        self.basis = nn.Parameter(torch.randn(widths[0], 4, 4))
        self.basis_scale = nn.Linear(in_dim, widths[0], bias=False)
        nn.init.normal_(self.basis_scale.weight, 0.0, 1 / math.sqrt(in_dim))
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                layers.append(Transition(widths[i - 1], width, up=True))
            layers += [ResidualBlock(width, expansion, cardinality, num_blocks) for _ in range(blocks_per_stage)]
        self.stages = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(widths[-1], out_channels, 1)
        size = 4 << (len(widths) - 1)
        self.layout = (f"4x4 basis to {size}x{size}: {len(widths)} stages of widths {','.join(map(str, widths))}, "
                       f"{blocks_per_stage} block(s) each, expansion {expansion}, cardinality {cardinality}")

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.num_classes:
            z = torch.cat([z, self.embed(to_labels(y, self.num_classes)).to(z.dtype)], dim=1)
        x = self.basis[None] * self.basis_scale(z)[:, :, None, None]
        return self.to_image(self.stages(x))


class R3GANDiscriminator(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int, expansion: int, cardinality: int,
                 in_channels: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        num_blocks = blocks_per_stage * len(widths)
        self.from_image = nn.Conv2d(in_channels, widths[-1], 1)
        layers: list[nn.Module] = []
        for i in reversed(range(len(widths))):  # G's stages, mirrored: from the image size down to 4x4
            layers += [ResidualBlock(widths[i], expansion, cardinality, num_blocks) for _ in range(blocks_per_stage)]
            if i:
                layers.append(Transition(widths[i], widths[i - 1], up=False))
        self.stages = nn.Sequential(*layers)
        # The basis's mirror: each channel's 4x4 map against a learned 4x4 map, then a linear layer.
        self.basis = nn.Conv2d(widths[0], widths[0], 4, groups=widths[0], bias=False)
        self.head = nn.Linear(widths[0], 1)
        if num_classes:
            self.embed = nn.Embedding(num_classes, widths[0])
            nn.init.normal_(self.embed.weight, 0.0, 1 / math.sqrt(widths[0]))

    def forward(self, x: Tensor, y: Tensor | None = None, classes: bool = False):
        """One logit per sample; with `classes`, also every class's projection score."""
        h = self.basis(self.stages(self.from_image(x))).flatten(1)
        logit = self.head(h).squeeze(1)
        if self.num_classes:
            # Projection: inner product of the class embedding with the features.
            logit = logit + (self.embed(to_labels(y, self.num_classes)) * h).sum(dim=1)
            if classes:
                return logit, h @ self.embed.weight.t()
        return logit


def _build(cfg, shape, num_classes: int) -> tuple[nn.Module, nn.Module]:
    if shape.kind != "image":
        raise ValueError(f"r3gan needs image data, the data holds {shape.kind}")
    channels, height, width = shape.sample_shape
    if height != width:
        raise ValueError(f"square images are needed, the data holds {height}x{width}")
    widths = stage_widths(cfg.widths, cfg.channels, height)
    check_groups(widths, cfg.expansion, cfg.cardinality)
    G = R3GANGenerator(cfg.z_dim, widths, cfg.blocks_per_stage, cfg.expansion, cfg.cardinality, channels,
                       num_classes)
    D = R3GANDiscriminator(widths, cfg.blocks_per_stage, cfg.expansion, cfg.cardinality, channels, num_classes)
    return G, D


def build_r3gan(cfg, shape) -> tuple[nn.Module, nn.Module]:
    return _build(cfg, shape, 0)


def build_r3gan_cond(cfg, shape) -> tuple[nn.Module, nn.Module]:
    if shape.num_classes < 2:
        raise ValueError("a conditional GAN needs labelled data with at least 2 classes")
    return _build(cfg, shape, shape.num_classes)
