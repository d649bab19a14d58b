"""A small ResNet G and D for images, after the residual networks of Gulrajani et al. 2017
(WGAN-GP, Appendix F) and Miyato et al. 2018 (SN-GAN, Appendix B.4).

G: z -> a linear layer to a b x b map -> residual up-blocks (nearest-neighbour upsampling,
each doubling the side) -> BatchNorm, ReLU, a 3x3 convolution and tanh. D: residual
down-blocks (average pooling, each halving the side) -> ReLU -> sum over positions -> one
logit. D has no BatchNorm (so its per-sample outputs do not depend on the batch) and takes
spectral normalization on every layer with `model.spectral_norm`.

The builder reads gan-dist's typed model config (`model.z_dim`, `model.channels`,
`model.spectral_norm`) and this model's own keys from `model.options`, which gan-dist hands
over unchanged; it refuses what it cannot build with a ValueError, which gan-dist reports on
one line at start-up.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

# This model's own keys under model.options, with their defaults.
OPTIONS = {
    # D's base width (default: model.channels).
    "d_channels": 0,
    # Residual blocks at each resolution of G and D.
    "blocks_per_stage": 1,
}


class UpBlock(nn.Module):
    """BN, ReLU, upsample x2, conv 3x3, BN, ReLU, conv 3x3; the shortcut upsamples and
    projects with a 1x1 convolution."""

    def __init__(self, channels_in: int, channels_out: int, upsample: bool):
        super().__init__()
        up = nn.Upsample(scale_factor=2, mode="nearest") if upsample else nn.Identity()
        # No biases: every path from these layers reaches a BatchNorm (the next block's, or the
        # one before G's output) through linear maps only, and BatchNorm removes a per-channel
        # constant. A bias here would get rounding noise as its gradient, which Adam scales up
        # to full-size steps.
        self.residual = nn.Sequential(
            nn.BatchNorm2d(channels_in), nn.ReLU(), up, nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU(), nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False))
        self.shortcut = nn.Sequential(up, nn.Conv2d(channels_in, channels_out, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class DownBlock(nn.Module):
    """(ReLU,) conv 3x3, ReLU, conv 3x3, average pool x2; the shortcut projects and pools.
    The first block of D sees the image itself, so it starts without a ReLU (SN-GAN's
    "optimized" block)."""

    def __init__(self, channels_in: int, channels_out: int, downsample: bool, first: bool, sn):
        super().__init__()
        pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.residual = nn.Sequential(
            nn.Identity() if first else nn.ReLU(), sn(nn.Conv2d(channels_in, channels_out, 3, padding=1)),
            nn.ReLU(), sn(nn.Conv2d(channels_out, channels_out, 3, padding=1)), pool)
        self.shortcut = nn.Sequential(sn(nn.Conv2d(channels_in, channels_out, 1)), pool)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, image_channels: int, base: int, stages: int, blocks: int):
        super().__init__()
        self.channels, self.base = channels, base
        self.project = nn.Linear(z_dim, channels * base * base, bias=False)  # no bias: see UpBlock
        layers = []
        for _ in range(stages):
            layers += [UpBlock(channels, channels, upsample=i == 0) for i in range(blocks)]
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                 nn.Conv2d(channels, image_channels, 3, padding=1), nn.Tanh())
        # What the plan prints beside the weight count.
        self.layout = f"ResNet: {base}x{base} base, {stages} up-stages of {blocks} block(s)"

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.channels, self.base, self.base)
        return self.out(self.blocks(h))


class ResNetDiscriminator(nn.Module):
    def __init__(self, channels: int, image_channels: int, stages: int, blocks: int, spectral: bool):
        super().__init__()
        sn = spectral_norm if spectral else (lambda layer: layer)
        layers, width_in = [], image_channels
        for stage in range(stages):
            for i in range(blocks):
                layers.append(DownBlock(width_in, channels, downsample=i == blocks - 1,
                                        first=stage == 0 and i == 0, sn=sn))
                width_in = channels
        self.blocks = nn.Sequential(*layers, nn.ReLU())
        self.head = sn(nn.Linear(channels, 1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        # gan-dist calls D(x, y) with the labels of labelled data; this D is unconditional.
        h = self.blocks(x).sum(dim=(2, 3))  # sum over positions (SN-GAN)
        return self.head(h).squeeze(1)  # one logit per sample: [B]


def stages_for(side: int) -> tuple[int, int]:
    """(base side, doublings): the side halved while it stays even and at least 4; 32 -> (4, 3),
    28 -> (7, 2)."""
    base, stages = side, 0
    while base % 2 == 0 and base // 2 >= 4:
        base, stages = base // 2, stages + 1
    return base, stages


def read_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown model.options key {unknown[0]} (custom-resnet knows: {', '.join(OPTIONS)})")
    found = {**OPTIONS, **options}
    for key, value in found.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"model.options.{key} must be an integer >= 0, got {value!r}")
    if found["blocks_per_stage"] < 1:
        raise ValueError("model.options.blocks_per_stage must be >= 1")
    return found


def build_resnet_gan(cfg, shape) -> tuple[nn.Module, nn.Module]:
    """(G, D) for gan-dist: `cfg` is its ModelConfig, `shape` the data's DataShape."""
    if shape.kind != "image":
        raise ValueError(f"custom-resnet needs image data, the data holds {shape.kind}")
    options = read_options(cfg.options)
    image_channels, height, width = shape.sample_shape
    if height != width:
        raise ValueError(f"custom-resnet makes square images, the data's are {height}x{width}")
    base, stages = stages_for(height)
    if stages == 0:
        raise ValueError(f"custom-resnet needs images of side 8 or more with a factor of 2, got {height}")
    blocks = options["blocks_per_stage"]
    G = ResNetGenerator(cfg.z_dim, cfg.channels, image_channels, base, stages, blocks)
    D = ResNetDiscriminator(options["d_channels"] or cfg.channels, image_channels, stages, blocks,
                            cfg.spectral_norm)
    return G, D


# What G takes: noise only. ("conditional": G(z, y); "super_resolution": G(lr_img).)
build_resnet_gan.task = "unconditional"
