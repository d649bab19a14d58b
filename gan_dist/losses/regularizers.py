"""Regularizers of D: gradient penalties and DiffAugment.

Penalties take gradients of D's output with respect to its input with
`create_graph=True`, so their backward reaches D's weights (double backward).
Under fp16 the outputs are scaled before taking those gradients and the
gradients unscaled after, so small gradients do not flush to zero and the
penalty does not go NaN (the StudioGAN mixed-precision WGAN-GP bug).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def input_gradients(logits: Tensor, inputs: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """d(sum of logits)/d(inputs), kept in the graph for a second backward."""
    (grads,) = torch.autograd.grad(outputs=logits.sum() * scale, inputs=inputs, create_graph=True)
    return grads / scale


def gradient_penalty(logits: Tensor, interpolates: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)|| - 1)^2] on random interpolates."""
    grads = input_gradients(logits, interpolates, scale).flatten(1).float()
    return ((grads.norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(logits: Tensor, reals: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad D(x)||^2] on real data; the caller weights it by gamma/2."""
    grads = input_gradients(logits, reals, scale).flatten(1).float()
    return grads.square().sum(dim=1).mean()


def r2_penalty(logits: Tensor, fakes: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """R2 (Mescheder et al. 2018): the same zero-centred penalty on G's samples, E[||grad D(G(z))||^2].
    With R1 it makes the relativistic pairing loss locally convergent (R3GAN, Huang et al. 2024,
    section 2.3); the caller weights it by gamma/2."""
    return r1_penalty(logits, fakes, scale)


def interpolate(real: Tensor, fake: Tensor, rng) -> Tensor:
    eps = rng.rand(real.shape[0], *([1] * (real.dim() - 1)))
    return (eps * real + (1 - eps) * fake).detach().requires_grad_(True)


# DiffAugment (Zhao et al. 2020): the same differentiable augmentations on real and
# fake images, in both D and G steps, so D cannot overfit a small data set.

def _color(x: Tensor, rng) -> Tensor:
    n = x.shape[0]
    rand = lambda: rng.rand(n, 1, 1, 1).to(x.dtype)  # noqa: E731
    x = x + (rand() - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand() * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean


def _translation(x: Tensor, rng, ratio: float = 0.125) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = rng.randint(-sh, sh + 1, (n, 1, 1))
    dx = rng.randint(-sw, sw + 1, (n, 1, 1))
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    yy = torch.clamp(yy[None] + dy + 1, 0, h + 1)
    xx = torch.clamp(xx[None] + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, yy, xx].permute(0, 3, 1, 2)


def _cutout(x: Tensor, rng, ratio: float = 0.5) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = rng.randint(0, h + (1 - ch % 2), (n, 1, 1))
    cx = rng.randint(0, w + (1 - cw % 2), (n, 1, 1))
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    top, left = cy - ch // 2, cx - cw // 2
    hole = (yy[None] >= top) & (yy[None] < top + ch) & (xx[None] >= left) & (xx[None] < left + cw)
    return x * (~hole).to(x.dtype)[:, None]


AUGMENTATIONS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: Tensor, policy: tuple[str, ...], rng, p: float = 1.0) -> Tensor:
    """`rng` draws the random numbers (rand(*shape), randint(low, high, shape)). With p < 1 each
    augmentation reaches each image with probability p (ADA's per-image probability, Karras et
    al. 2020), the others passing unchanged; p = 1 draws no more random numbers than before."""
    for name in policy:
        augmented = AUGMENTATIONS[name](x, rng)
        if p < 1:
            keep = (rng.rand(x.shape[0], *([1] * (x.dim() - 1))) < p).to(x.dtype)
            augmented = x + keep * (augmented - x)
        x = augmented
    return x.contiguous()
