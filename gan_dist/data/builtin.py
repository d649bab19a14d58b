"""Built-in datasets that need no download.

The 2-D Gaussian mixtures of the GAN mode-collapse literature (VEEGAN, PacGAN,
Unrolled GAN), with the standard definitions:
- ring8: 8 Gaussians, std 0.01, centres on the unit circle at angles 2*pi*i/8
  (not linspace(0, 2*pi, 8), which repeats the first centre and gives 7);
- grid25: 25 Gaussians, std 0.05, centres (i, j) for i, j in {-4, -2, 0, 2, 4}.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from gan_dist.data import idx
from gan_dist.data.errors import DataError


@dataclass(frozen=True)
class Mixture2D:
    name: str
    means: np.ndarray  # [K, 2]
    std: float

    @property
    def num_modes(self) -> int:
        return len(self.means)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n points and the index of the Gaussian each came from."""
        modes = rng.integers(0, self.num_modes, size=n)
        points = self.means[modes] + self.std * rng.standard_normal((n, 2))
        return points.astype(np.float32), modes.astype(np.int64)

    def to_meta(self) -> dict:
        return {"means": self.means.tolist(), "std": self.std}

    @classmethod
    def from_meta(cls, name: str, meta: dict) -> "Mixture2D":
        return cls(name, np.asarray(meta["means"], dtype=np.float64), float(meta["std"]))


def ring8() -> Mixture2D:
    angles = 2 * math.pi * np.arange(8) / 8
    return Mixture2D("ring8", np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01)


def grid25() -> Mixture2D:
    ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    means = np.array([(i, j) for i in ticks for j in ticks])
    return Mixture2D("grid25", means, 0.05)


MIXTURES = {"ring8": ring8, "grid25": grid25}

# How builtin mixtures are packed: 2**17 points in records of 256 points, 32 records
# per shard (16 shards). Records hold several points because a training step needs
# hundreds of them and per-record overhead is what limits a streaming reader.
MIXTURE_POINTS = 2**17
POINTS_PER_RECORD = 256
RECORDS_PER_SHARD = 32
# Data identity does not depend on the training seed.
MIXTURE_DATA_SEED = 20140610


# Built-in image datasets --------------------------------------------------------
# Labelled images that need no download, for demos and tests: made from a fixed
# seed, or read from files a system package installs, so every node packs the
# same pixels.

# Image records hold one image each; small shards so that tests can use many ranks.
IMAGES_PER_SHARD = 256


@dataclass(frozen=True)
class ImageSet:
    name: str
    classes: tuple[str, ...]
    make: "callable[[], tuple[np.ndarray, np.ndarray]]"  # -> uint8 [N, H, W, C], int64 [N]
    preprocess: str = "none"  # what was done to the original images, recorded in the index
    per_shard: int = IMAGES_PER_SHARD
    check: "callable[[], object] | None" = None  # raises DataError if the set cannot be made here
    meta: dict = field(default_factory=dict)  # more for the index's meta (how the eval judges the set)


def digits(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes),
    scaled from 0..16 to 0..255 and upscaled with bicubic interpolation."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
                    for im in small])
    return big[:, :, :, None], bunch.target.astype(np.int64)


SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


def shapes(size: int = 32, n: int = 8192, seed: int = 20251122) -> tuple[np.ndarray, np.ndarray]:
    """One filled shape per image, of random size, place and colour, on a dark
    background; drawn at 4x and downsampled, so edges are anti-aliased."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_CLASSES), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    big = 4 * size
    for i, label in enumerate(labels):
        background = tuple(int(v) for v in rng.integers(0, 60, size=3))
        colour = tuple(int(v) for v in rng.integers(120, 256, size=3))
        radius = rng.uniform(0.2, 0.4) * big
        cx, cy = rng.uniform(radius, big - radius, size=2)
        image = Image.new("RGB", (big, big), background)
        _draw_shape(ImageDraw.Draw(image), SHAPE_CLASSES[label], cx, cy, radius, colour)
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
    return out, labels.astype(np.int64)


def _draw_shape(draw, kind: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.87, cy + r * 0.5), (cx - r * 0.87, cy + r * 0.5)], fill=colour)
    else:  # cross
        t = r * 0.3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)


# Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): Zalando's article images, 28x28 grey,
# 60,000 training and 10,000 test images, 10 balanced classes, from the IDX files that
# Debian's package `dataset-fashion-mnist` installs. The recipes want 32x32: each image is
# padded with 2 black pixels on every side (the background is 0 = black), which keeps every
# original pixel, where resizing would resample them all.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DIR_ENV = "GAN_DIST_FASHION_MNIST_DIR"  # another folder holding the same four files
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_SPLITS = {"fashion-mnist": "train", "fashion-mnist-test": "t10k"}
# 2500 images (about 2 MB of PNG) per shard: 24 training shards, 4 test shards.
FASHION_MNIST_PER_SHARD = 2500


def fashion_mnist_files(name: str) -> Path:
    """The images file of builtin `name`'s split; DataError saying how to get it if it is missing."""
    folder = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR)
    images = folder / f"{FASHION_MNIST_SPLITS[name]}-images-idx3-ubyte.gz"
    labels = folder / f"{FASHION_MNIST_SPLITS[name]}-labels-idx1-ubyte.gz"
    missing = [p for p in (images, labels) if not p.is_file()]
    if missing:
        raise DataError(f"builtin:{name} needs {missing[0]}, which is missing: install Debian's package with "
                        f"`apt-get install dataset-fashion-mnist`, or pack IDX files you have with "
                        f"`gan-dist data pack {images.name} --out DIR` and use data.source=DIR")
    return images


def fashion_mnist(name: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, labels, _ = idx.read_pair(fashion_mnist_files(name))
    if pixels.shape[1:] != (28, 28) or labels is None:
        raise DataError(f"builtin:{name}: expected labelled 28x28 images in {fashion_mnist_files(name)}, "
                        f"got {list(pixels.shape)}")
    return idx.pad_to(pixels, 32)[..., None], labels


# Stacked Fashion-MNIST: Stacked MNIST (Metz et al. 2017, Unrolled GANs; Srivastava et al. 2017,
# VEEGAN) made of Fashion-MNIST. Each image's three channels are three training images drawn at
# random, so the data has 10 x 10 x 10 = 1,000 modes (class triples), nearly uniform; a G that
# drops modes shows it in the eval's count (evaluate.evaluate_stacked: the Fashion-MNIST
# classifier on each channel). 60,000 images, unlabelled (the eval knows the modes), made from a
# fixed seed: every node packs the same pixels.
STACKED_IMAGES = 60_000
STACKED_SEED = 20170601
STACKED_META = {"stacked": {"base": "fashion-mnist", "channels": 3, "num_modes": 1000}}


def stacked_fashion_mnist(n: int = STACKED_IMAGES, seed: int = STACKED_SEED) -> tuple[np.ndarray, None]:
    pixels, _ = fashion_mnist("fashion-mnist")  # [60000, 32, 32, 1]
    picks = np.random.default_rng(seed).integers(0, len(pixels), size=(n, 3))
    return np.concatenate([pixels[picks[:, c]] for c in range(3)], axis=3), None


IMAGES = {
    "digits": ImageSet("digits", tuple(str(d) for d in range(10)), digits, preprocess="bicubic8to32"),
    "shapes": ImageSet("shapes", SHAPE_CLASSES, shapes),
    "shapes64": ImageSet("shapes64", SHAPE_CLASSES, lambda: shapes(size=64)),
    **{name: ImageSet(name, FASHION_MNIST_CLASSES, partial(fashion_mnist, name), preprocess="pad28to32",
                      per_shard=FASHION_MNIST_PER_SHARD, check=partial(fashion_mnist_files, name))
       for name in FASHION_MNIST_SPLITS},
    "stacked-fashion-mnist": ImageSet("stacked-fashion-mnist", (), stacked_fashion_mnist,
                                      preprocess="pad28to32-stacked3", per_shard=FASHION_MNIST_PER_SHARD,
                                      check=partial(fashion_mnist_files, "fashion-mnist"), meta=STACKED_META),
}
