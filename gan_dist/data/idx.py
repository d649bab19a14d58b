"""IDX files: the format of MNIST, and of KMNIST, EMNIST and Fashion-MNIST after it.

An IDX file is two zero bytes, a type byte (0x08: unsigned bytes), the number
of dimensions, each dimension as a big-endian uint32, then the values in
row-major order (LeCun et al., "The MNIST database", file formats section).
A split is a pair: `PREFIX-images-idx3-ubyte` (uint8 [N, rows, cols]) and
`PREFIX-labels-idx1-ubyte` (uint8 [N]), each possibly gzip-compressed (`.gz`);
some copies write `.idx3-ubyte` with a dot, which is accepted too.

EMNIST's files hold each image transposed (column-major); they are packed as
stored, like every other IDX file.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import zlib
from pathlib import Path

import numpy as np

from gan_dist.data.errors import DataError

log = logging.getLogger("gan_dist.data")

IMAGES_PATTERN = re.compile(r"(?P<prefix>.+)-images(?P<sep>[-.])idx3-ubyte(?:\.gz)?")
UBYTE = 0x08
TYPE_NAMES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
              0x0D: "32-bit floats", 0x0E: "64-bit floats"}
# What a header may announce before anything is read: 2**33 values (8 GiB of uint8).
MAX_VALUES = 1 << 33
READ_CHUNK = 16 << 20


def is_images_file(name: str) -> bool:
    return IMAGES_PATTERN.fullmatch(name) is not None


def find_pair(src: Path) -> tuple[Path, Path | None]:
    """(images file, labels file or None) named by `src`: an images file (its labels
    are looked for beside it) or a folder holding one split's images file."""
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if p.is_file() and is_images_file(p.name))
        if not found:
            raise DataError(f"{src}: no IDX images file (*-images-idx3-ubyte[.gz])")
        if len(found) > 1:
            raise DataError(f"{src} holds {len(found)} IDX images files ({', '.join(p.name for p in found)}); "
                            f"name the one to pack, e.g. {found[0]}")
        images = found[0]
    else:
        images = src
    match = IMAGES_PATTERN.fullmatch(images.name)
    if match is None:
        raise DataError(f"{images}: not named like an IDX images file (*-images-idx3-ubyte[.gz])")
    stem = f"{match['prefix']}-labels{match['sep']}idx1-ubyte"
    labels = next((p for p in (images.with_name(stem), images.with_name(stem + ".gz")) if p.is_file()), None)
    return images, labels


def read_images(path: Path) -> np.ndarray:
    """uint8 [N, rows, cols] from an idx3 file; DataError if it is not one, or is cut short."""
    images = read_idx(path, 3, "an images file")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{path}: an IDX images file of shape {list(images.shape)} holds no image")
    return images


def read_labels(path: Path, count: int, images: Path) -> np.ndarray:
    """int64 [count] from an idx1 file, which must hold one label per image."""
    labels = read_idx(path, 1, "a labels file")
    if len(labels) != count:
        raise DataError(f"{path}: {len(labels):,} labels for the {count:,} images of {images.name}")
    return labels.astype(np.int64)


def read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """The uint8 array of an IDX file of `ndim` dimensions (plain or gzip)."""
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[3] == 0:
                raise DataError(f"{path}: not an IDX file (it starts with {head[:4]!r}, not 00 00 TYPE DIMS)")
            if head[2] != UBYTE:
                raise DataError(f"{path}: IDX values are {TYPE_NAMES.get(head[2], f'of type {head[2]:#04x}')}; "
                                f"{what} must hold unsigned bytes")
            if head[3] != ndim:
                raise DataError(f"{path}: an IDX file of {head[3]} dimension(s); {what} has {ndim}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            shape = [int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim)]
            size = math.prod(shape)
            if size > MAX_VALUES:
                raise DataError(f"{path}: its header announces {shape} = {size:,} values, more than {MAX_VALUES:,}")
            data = _read_exactly(f, size + 1)  # one byte more: trailing bytes mean the header is wrong
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc}; a truncated or damaged file?)") from None
    if len(data) < size:
        raise DataError(f"{path}: truncated: {len(data):,} bytes of values, its header announces "
                        f"{' x '.join(map(str, shape))} = {size:,}")
    if len(data) > size:
        raise DataError(f"{path}: more bytes than its header's shape {shape} announces (not an IDX file?)")
    return np.frombuffer(bytes(data), np.uint8).reshape(shape)


def _read_exactly(f, size: int) -> bytearray:
    """Up to `size` bytes, read in chunks (memory grows with what is there, not with the claim)."""
    out = bytearray()
    while len(out) < size:
        chunk = f.read(min(READ_CHUNK, size - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def read_pair(src: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 images [N, H, W], int64 labels [N] or None, the split's name) of an IDX split."""
    images_path, labels_path = find_pair(src)
    name = IMAGES_PATTERN.fullmatch(images_path.name)["prefix"]
    images = read_images(images_path)
    if labels_path is None:
        log.warning("%s: no %s-labels-idx1-ubyte[.gz] beside it: packing the images unlabelled", images_path, name)
        return images, None, name
    return images, read_labels(labels_path, len(images), images_path), name


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W] centred on a black (0) size x size canvas: every original pixel kept."""
    n, h, w = images.shape
    if h > size or w > size:
        raise DataError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left)))
