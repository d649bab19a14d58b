"""Real photographs for super-resolution, and random crops of large images.

`builtin:photos` and `builtin:photos-eval` are the twelve nature photographs
of Debian's package `mate-backgrounds` (GPL-2+; JPEG, 1280x1024 to 2560x1920),
split by name into nine for training and three held out for evaluation, never
trained on. Packed, each photo becomes `PHOTO_CROPS` random 96x96 crops (the
HR patches of SRGAN, Ledig et al. 2017, section 3.2); the evaluation of a
super-resolution model reads the held-out photos whole (`eval.sr_photos`).

Crops are cut when packing, not when streaming: decoding one 2560x1920 JPEG
took 33 ms of CPU on the development machine, a 96x96 PNG crop of it 0.3 ms,
so a batch of 16 crops from 16 photos would cost 0.5 s of decoding against
5 ms; and crops in shards keep the stream's exact resume (a cursor over
records) as it is. Each image's crop positions come from a generator seeded
with (pack seed, the image's key), so the bytes do not depend on the number of
pack workers.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from gan_dist.data.errors import DataError

PHOTOS_DIR = "/usr/share/backgrounds/mate/nature"
PHOTOS_DIR_ENV = "GAN_DIST_PHOTOS_DIR"  # another folder holding the same photographs
PHOTOS_PACKAGE = "mate-backgrounds"
# Held out for evaluation, by name: a grass dune under sky and sea, a ladybird on flowers
# and leaves, weathered wood grain (three different textures). Any other photo trains.
PHOTOS_EVAL = ("Dune.jpg", "LadyBird.jpg", "Wood.jpg")
PHOTO_SPLITS = {"photos": "train", "photos-eval": "eval"}
# SRGAN's HR patch side, and the crops packed per photo (9 training photos: 9,216 crops,
# about 75 MB of PNG; the crops overlap, each photo holds 150 to 530 disjoint ones).
PHOTO_CROP = 96
PHOTO_CROPS = 1024
PHOTO_CROPS_PER_SHARD = 1024

# The most pixels an input image may have before it is decoded (a decompression bomb: a
# small file that decodes to gigabytes). 2**26 is 67 million pixels, 8192x8192.
MAX_PIXELS = 1 << 26


class ImageTooLarge(DataError):
    """An image over the pixel limit, refused before its pixels are decoded."""


def photos_folder() -> Path:
    return Path(os.environ.get(PHOTOS_DIR_ENV) or PHOTOS_DIR)


def photo_files(name: str) -> list[Path]:
    """The photos of builtin `name` (photos: training, photos-eval: held out), sorted; a
    DataError naming the package to install when they are missing."""
    folder = photos_folder()
    found = sorted(p for p in folder.glob("*.jpg") if p.is_file()) if folder.is_dir() else []
    held_out = [p for p in found if p.name in PHOTOS_EVAL]
    if len(held_out) < len(PHOTOS_EVAL) or len(found) <= len(held_out):
        raise DataError(f"builtin:{name} needs the photographs of Debian's package {PHOTOS_PACKAGE} in {folder}, "
                        f"which are missing: `apt-get install {PHOTOS_PACKAGE}` (or set {PHOTOS_DIR_ENV} to a "
                        f"folder holding them)")
    return held_out if PHOTO_SPLITS[name] == "eval" else [p for p in found if p.name not in PHOTOS_EVAL]


@contextmanager
def pixel_limit(max_pixels: int):
    """Pillow's own bomb check off (it warns, then refuses at twice its 89-million-pixel
    default): `open_image` applies `max_pixels` instead, which the user can raise or lower."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


RAISE_HINT = "; raise it with --max-pixels if the image is genuine"


def check_pixels(image: Image.Image, where: str, max_pixels: int, hint: str = RAISE_HINT) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{where}: {width}x{height} is {width * height:,} pixels, over the limit of "
                            f"{max_pixels:,} (a decompression bomb?){hint}")


def open_image(source, where: str, max_pixels: int = MAX_PIXELS, hint: str = RAISE_HINT) -> Image.Image:
    """A Pillow image of `source` (a path or a file object), its size checked against
    `max_pixels` from the header alone, before any pixel is decoded."""
    with pixel_limit(max_pixels):
        image = Image.open(source)
    check_pixels(image, where, max_pixels, hint)
    return image


def load_rgb(path: Path, channels: int = 3, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 [H, W, channels] pixels of an image file (alpha dropped, grey or RGB as asked)."""
    with open_image(path, str(path), max_pixels, hint="") as image, pixel_limit(max_pixels):
        return np.asarray(image.convert("L" if channels == 1 else "RGB")).reshape(image.height, image.width, -1)


def crop_seed(seed: int, key: str) -> list[int]:
    """The seed of one image's crop positions: the pack seed and the image's key."""
    return [seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")]


def crop_boxes(width: int, height: int, crop: int, count: int, seed: list[int]) -> list[tuple[int, int, int, int]]:
    """`count` crop boxes (left, top, right, bottom) of `crop` x `crop`, uniform over the image."""
    rng = np.random.default_rng(seed)
    left = rng.integers(0, width - crop + 1, size=count)
    top = rng.integers(0, height - crop + 1, size=count)
    return [(int(x), int(y), int(x) + crop, int(y) + crop) for x, y in zip(left, top)]


def interleave(groups: Iterator[list], block: int, seed: int) -> Iterator:
    """The items of `groups` (an image's crops) in a seeded random order within each block of
    `block` groups: consecutive records then come from different photos, so a batch cut from
    consecutive records (the stream's shuffle window is 64 records) mixes photos. Memory holds
    one block of crops, not the whole data set."""
    rng = np.random.default_rng([seed, 1])
    pending: list = []
    count = 0
    for group in groups:
        pending += group
        count += 1
        if count == block:
            yield from (pending[i] for i in rng.permutation(len(pending)))
            pending, count = [], 0
    yield from (pending[i] for i in rng.permutation(len(pending)))
