"""The classic DCGAN training loop of pytorch/examples (dcgan/main.py), written here as the
baseline the benchmarks compare gan-dist with: the paper's G and D (transposed and strided
4x4 convolutions, BatchNorm, ReLU / LeakyReLU(0.2), tanh out, a sigmoid on D), weights
from N(0, 0.02), BCE on the sigmoid, Adam 2e-4 (0.5, 0.999), one D update on a real and a
fake batch, then one G update on that fake; no EMA, no regularizers, one process.

`classic_generator` and `classic_discriminator` take the image size (32: 4 -> 8 -> 16 -> 32,
64: the example's own 4 -> ... -> 64) and the width ngf = ndf.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def _layers(size: int) -> int:
    """Doublings after the 4x4 start: 3 for 32x32, 4 for 64x64 (powers of two from 16)."""
    k = size.bit_length() - 3
    if size < 16 or size != 4 * 2 ** k:
        raise ValueError(f"the classic DCGAN makes power-of-two images from 16x16, not {size}x{size}")
    return k


def classic_generator(nz: int, ngf: int, nc: int, size: int = 64) -> nn.Module:
    k = _layers(size)
    widths = [ngf * 2 ** (k - 1 - i) for i in range(k)]  # 64: 8, 4, 2, 1 (x ngf)
    layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(widths[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def classic_discriminator(ndf: int, nc: int, size: int = 64) -> nn.Module:
    k = _layers(size)
    widths = [ndf * 2 ** i for i in range(k)]  # 64: 1, 2, 4, 8 (x ndf)
    layers = [nn.Conv2d(nc, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    return nn.Sequential(*layers)


def weights_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ClassicLoop:
    """The example's loop over batches: `batches` are held on the device (the GPU benchmark),
    or drawn from `images` (all of a data set in memory) in a fresh random order each epoch,
    as the example's shuffling DataLoader does."""

    def __init__(self, nz: int, width: int, device: torch.device, reads: bool, *,
                 batches: list[torch.Tensor] | None = None, images: torch.Tensor | None = None,
                 batch_size: int = 64, seed: int = 0):
        sample = batches[0] if batches is not None else images
        nc, size = sample.shape[1], sample.shape[-1]
        torch.manual_seed(seed)
        self.netG = classic_generator(nz, width, nc, size).to(device)
        self.netD = classic_discriminator(width, nc, size).to(device)
        self.netG.apply(weights_init)
        self.netD.apply(weights_init)
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.criterion = nn.BCELoss()
        self.batches, self.images, self.batch_size = batches, images, batch_size
        self.nz, self.device, self.reads, self.i = nz, device, reads, 0
        self.order = torch.empty(0, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    def next_real(self) -> torch.Tensor:
        if self.batches is not None:
            real = self.batches[self.i % len(self.batches)]
            self.i += 1
            return real
        if len(self.order) < self.batch_size:  # a new epoch (the last partial batch dropped)
            self.order = torch.randperm(len(self.images), generator=self.generator)
        take, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        self.i += 1
        return self.images[take].to(self.device)

    def step(self) -> None:
        real = self.next_real()
        b = real.size(0)
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z))).
        self.netD.zero_grad()
        label = torch.full((b,), 1.0, device=self.device)
        output = self.netD(real).view(-1)
        errD_real = self.criterion(output, label)
        errD_real.backward()
        noise = torch.randn(b, self.nz, 1, 1, device=self.device)
        fake = self.netG(noise)
        label.fill_(0.0)
        output_fake = self.netD(fake.detach()).view(-1)
        errD_fake = self.criterion(output_fake, label)
        errD_fake.backward()
        self.optD.step()
        # (2) Update G: maximize log(D(G(z))).
        self.netG.zero_grad()
        label.fill_(1.0)
        output_g = self.netD(fake).view(-1)
        errG = self.criterion(output_g, label)
        errG.backward()
        self.optG.step()
        if self.reads:  # what the example prints every step: host syncs
            (errD_real + errD_fake).item(), errG.item(), output.mean().item()
            output_fake.mean().item(), output_g.mean().item()

    def train_for(self, seconds: float) -> dict:
        """Steps until `seconds` of wall time have passed; how many steps and images."""
        t0, steps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            self.step()
            steps += 1
        return {"steps": steps, "images": steps * self.batch_size, "seconds": time.perf_counter() - t0}


class ClassicGenerator(nn.Module):
    """The classic G behind gan-dist's generator interface (z [N, nz] -> images), for the evals."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z, y=None):
        return self.net(z[:, :, None, None])
