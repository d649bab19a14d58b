"""PNG pictures of samples, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def scatter_png(real: np.ndarray, fake: np.ndarray, size: int = 512, margin: float = 0.1) -> bytes:
    """Real points in grey, generated points in red, on a square canvas fitted to the real data."""
    lo, hi = real.min(axis=0), real.max(axis=0)
    span = float(max(hi - lo)) * (1 + 2 * margin) or 1.0
    centre = (lo + hi) / 2
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def to_px(points: np.ndarray) -> np.ndarray:
        uv = (points - centre) / span + 0.5
        return np.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], axis=1)

    for color, points in (((170, 170, 170), real), ((220, 30, 30), fake)):
        for x, y in to_px(points):
            if 0 <= x < size and 0 <= y < size:
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=color)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_grid_png(images: np.ndarray, columns: int = 8, pad: int = 2) -> bytes:
    """A grid of [N, C, H, W] images in [-1, 1] as PNG bytes (grey for 1 channel, RGB for 3)."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    pixels = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, k = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top:top + h, left:left + w] = image.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buf, format="PNG")
    return buf.getvalue()
