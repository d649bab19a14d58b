"""G on fixed inputs: the probe behind the collapse signals, and the sample grids.

The probe noise is drawn once from the run's seed (the same on every rank) and never
from a training RNG stream, so probing and sampling do not change the run."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dist.data.builtin import Mixture2D
from gan_dist.evaluate import HIGH_QUALITY_STDS, generate
from gan_dist.models.srgan import downsample
from gan_dist.visualize import image_grid_png, scatter_png

GRID_SAMPLES = 64


class Probes:
    def __init__(self, task: str, num_classes: int, z_dim: int, sr_scale: int, seed: int, size: int, device):
        self.task, self.num_classes, self.z_dim, self.sr_scale, self.seed = task, num_classes, z_dim, sr_scale, seed
        self.device = device
        # Enough for the collapse probe and a grid of 8 per class.
        count = max(size, GRID_SAMPLES, 8 * num_classes)
        self.z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)

    def inputs(self, n: int, last_real: Tensor) -> tuple:
        """G's inputs on the fixed probe noise (with labels cycling through the classes),
        or for super-resolution the last real batch downsampled."""
        if self.task == "super_resolution":
            return (downsample(last_real[:n], self.sr_scale),)
        z = self.z[:n]
        if self.task == "conditional":
            return z, torch.arange(len(z), device=z.device) % self.num_classes
        return (z,)

    @torch.no_grad()
    def probe(self, G: nn.Module, n: int, last_real: Tensor | None) -> Tensor | None:
        """G's samples on the fixed probe inputs. G runs in training mode, as it trains; its
        BatchNorm running statistics are put back, so monitoring does not change the run."""
        if n == 0 or last_real is None:
            return None
        buffers = [b.clone() for b in G.buffers()]
        fake = G(*self.inputs(n, last_real))
        for b, saved in zip(G.buffers(), buffers):
            b.copy_(saved)
        return fake

    @torch.no_grad()
    def grid_png(self, G_ema: nn.Module, last_real: Tensor, data_meta: dict, step: int, recipe: str) -> bytes:
        """The sample grid, captioned with the recipe and step: G_ema's images on the probe noise
        (a conditional G: one labelled row per class); for 2-D data a scatter over the real
        mixture; for super-resolution rows of (low resolution, generated, real)."""
        title, text = f"{recipe}: G_ema at step {step}", {"recipe": recipe, "step": str(step)}
        if data_meta["kind"] == "points":
            mixture = Mixture2D.from_meta(data_meta["name"], data_meta["mixture"])
            real, _ = mixture.sample(1000, np.random.default_rng(self.seed))
            return scatter_png(real, generate(G_ema, 1000, self.z_dim, self.seed, self.device), mixture.means,
                               HIGH_QUALITY_STDS * mixture.std, caption=title, text=text)
        if self.task == "conditional":
            columns = GRID_SAMPLES // 8
            labels = torch.arange(self.num_classes, device=self.z.device).repeat_interleave(columns)
            fake = G_ema(self.z[:len(labels)], labels).float().cpu()
            names = data_meta.get("classes") or [str(k) for k in range(self.num_classes)]
            return image_grid_png(fake.numpy(), columns=columns, caption=title, text=text,
                                  row_labels=[f"{k} {names[k]}" for k in range(self.num_classes)])
        inputs = self.inputs(GRID_SAMPLES, last_real)
        fake = G_ema(*inputs).float().cpu()
        if self.task != "super_resolution":
            return image_grid_png(fake.numpy(), columns=8, caption=title, text=text)
        lr_up = F.interpolate(inputs[0].float().cpu(), size=fake.shape[-2:], mode="nearest")
        fake = torch.stack([lr_up, fake, last_real[:len(fake)].float().cpu()], 1).flatten(0, 1)[:48]
        return image_grid_png(fake.numpy(), columns=6, caption=f"{title} (low resolution, SR, original)", text=text)
