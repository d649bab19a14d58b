"""The MLP GAN (Goodfellow et al. 2014): G and D are MLPs with `depth` hidden layers of
`hidden` units. On 2-D mixtures (the VEEGAN protocol) G's output is linear; on images G
ends in tanh (the data lives in [-1, 1]) and D sees the flattened image."""

from __future__ import annotations

import math

from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(self, z_dim: int, hidden: int, depth: int, sample_shape: tuple[int, ...], activation: str,
                 bounded: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.sample_shape = tuple(sample_shape)
        self.net = mlp(z_dim, hidden, depth, math.prod(sample_shape), activation)
        if bounded:  # images: squash to [-1, 1] as the data
            self.net.append(nn.Tanh())

    def forward(self, z, y=None):
        return self.net(z).view(z.shape[0], *self.sample_shape)


class Discriminator(nn.Module):
    def __init__(self, hidden: int, depth: int, sample_shape: tuple[int, ...], activation: str):
        super().__init__()
        self.net = mlp(math.prod(sample_shape), hidden, depth, 1, activation)

    def forward(self, x, y=None):
        # One logit per sample.
        return self.net(x.flatten(1)).squeeze(1)


def build_mlp_gan(cfg, shape):
    G = Generator(cfg.z_dim, cfg.hidden, cfg.depth, shape.sample_shape, cfg.activation, bounded=shape.kind == "image")
    D = Discriminator(cfg.hidden, cfg.depth, shape.sample_shape, cfg.activation)
    return G, D
