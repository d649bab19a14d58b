"""DCGAN (Radford et al. 2016) and its class-conditional variant.

G: transposed convolutions from a small base map up to the image size, BatchNorm
and ReLU, tanh out. D: strided convolutions, BatchNorm and LeakyReLU(0.2), then a
convolution of the base map to one logit. The paper's base is 4x4 (powers of two);
other sizes start from a base of 3 to 7 pixels that doubles to the target
(28 = 7 -> 14 -> 28, 48 = 3 -> 6 -> 12 -> 24 -> 48), so MNIST-format data trains at
its own 28x28. The conditional model (`cgan`) swaps G's
BatchNorm for class-conditional BatchNorm and gives D a projection head
(Miyato & Koyama 2018): D(x, y) = w.h(x) + embed(y).h(x).
"""

from __future__ import annotations

from torch import nn

from gan_dist.models.layers import (ConditionalBatchNorm2d, CondSequential, apply_spectral_norm, d_norm,
                                    base_and_doublings, dcgan_init, to_labels)


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, image_size: int, out_channels: int, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        base, steps = base_and_doublings(image_size, "dcgan")
        width = channels * 2 ** (steps - 1)
        self.layout = f"{base}x{base} base, doubled {steps} times to {image_size}x{image_size}"

        def norm(n):
            return ConditionalBatchNorm2d(n, num_classes) if num_classes else nn.BatchNorm2d(n)

        # z -> a base x base map, then x2 steps (the last one to the image's channels).
        layers = [nn.ConvTranspose2d(z_dim, width, base, 1, 0, bias=False), norm(width), nn.ReLU(True)]
        for _ in range(steps - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), norm(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = CondSequential(*layers)
        dcgan_init(self)

    def forward(self, z, y=None):
        y = to_labels(y, self.num_classes) if self.num_classes else None
        return self.net(z[:, :, None, None], y)


class DCGANDiscriminator(nn.Module):
    def __init__(self, channels: int, image_size: int, in_channels: int, num_classes: int = 0,
                 spectral: bool = False, batchnorm: bool = True):
        super().__init__()
        self.num_classes = num_classes
        base, steps = base_and_doublings(image_size, "dcgan")
        use_norm = batchnorm and not spectral  # SN-GAN's D has no BatchNorm
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = channels
        for _ in range(steps - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), d_norm(width * 2, use_norm),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, base, 1, 0, bias=False)  # the base x base map -> one logit
        if num_classes:
            self.embed = nn.Embedding(num_classes, width)
        dcgan_init(self)
        if num_classes:
            # Small like the other weights: the default N(0, 1) makes the projection term
            # dwarf the rest of D's output from the first step.
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral:
            apply_spectral_norm(self)

    def forward(self, x, y=None, classes: bool = False):
        """One logit per sample; with `classes`, also every class's projection score
        [N, num_classes] (the logits of the auxiliary classification loss)."""
        h = self.features(x)
        logit = self.head(h).flatten(1).squeeze(1)
        if self.num_classes:
            # Projection: inner product of the class embedding with the pooled features.
            pooled = h.sum(dim=(2, 3))
            logit = logit + (self.embed(to_labels(y, self.num_classes)) * pooled).sum(dim=1)
            if classes:
                return logit, pooled @ self.embed.weight.t()
        return logit


def _image_dims(shape):
    if shape.kind != "image":
        raise ValueError(f"this architecture needs image data, the data holds {shape.kind}")
    channels, height, width = shape.sample_shape
    if height != width:
        raise ValueError(f"square images are needed, the data holds {height}x{width}")
    return channels, height


def build_dcgan(cfg, shape):
    channels, size = _image_dims(shape)
    G = DCGANGenerator(cfg.z_dim, cfg.channels, size, channels)
    D = DCGANDiscriminator(cfg.channels, size, channels, spectral=cfg.spectral_norm, batchnorm=cfg.d_batchnorm)
    return G, D


def build_cgan(cfg, shape):
    channels, size = _image_dims(shape)
    if shape.num_classes < 2:
        raise ValueError("a conditional GAN needs labelled data with at least 2 classes")
    G = DCGANGenerator(cfg.z_dim, cfg.channels, size, channels, num_classes=shape.num_classes)
    D = DCGANDiscriminator(cfg.channels, size, channels, num_classes=shape.num_classes, spectral=cfg.spectral_norm,
                           batchnorm=cfg.d_batchnorm)
    return G, D
