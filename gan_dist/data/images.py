"""Image bytes <-> pixels with Pillow: decode, encode, resize, preview grids.

Pixels are uint8 [H, W, C] with C = 1 (mode "L") or 3 ("RGB"). Shards carry
PNG, JPEG or WebP bytes; anything Pillow opens can be packed (re-encoded).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHARD_EXTS = ("png", "jpg", "jpeg", "webp")  # member extensions the stream decodes
PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# Files an image folder may hold; the last four are re-encoded when packed.
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def pil_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def channels_of(mode: str) -> int:
    return 1 if mode in GRAY_MODES else 3


def sniff(data: bytes) -> str:
    """The shard extension of encoded bytes, from their magic number ('' if none)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def decode(data: bytes, ext: str, channels: int) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, channels]. Naming the format skips Pillow's probing."""
    with Image.open(io.BytesIO(data), formats=(PIL_FORMAT[ext],)) as im:
        mode = pil_mode(channels)
        pixels = np.asarray(im if im.mode == mode else im.convert(mode))
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def encode(image: Image.Image, ext: str, quality: int = 95) -> bytes:
    """Deterministic bytes: no timestamps, fixed settings."""
    buf = io.BytesIO()
    if ext == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif ext == "jpg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif ext == "webp":
        image.save(buf, format="WEBP", quality=quality, lossless=quality >= 100, method=4)
    else:
        raise ValueError(f"cannot encode .{ext}")
    return buf.getvalue()


def to_image(pixels: np.ndarray) -> Image.Image:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] -> a Pillow image."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels))


def normalise_mode(image: Image.Image) -> Image.Image:
    """L or RGB: alpha and palettes are flattened, 16-bit grey is scaled to 8."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I"):
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
    return image.convert(pil_mode(channels_of(image.mode)))


def resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size`, then cut the centre `size` x `size` square."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    w2, h2 = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((w2, h2), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (w2 - size) // 2, (h2 - size) // 2
    return image.crop((left, top, left + size, top + size))


def grid_png(pixels: np.ndarray, cols: int = 8, pad: int = 2) -> bytes:
    """uint8 [N, C, H, W] -> a PNG of the images in rows of `cols`."""
    n, c, h, w = pixels.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        canvas[y:y + h, x:x + w] = pixels[i].transpose(1, 2, 0)
    buf = io.BytesIO()
    to_image(canvas).save(buf, format="PNG")
    return buf.getvalue()
