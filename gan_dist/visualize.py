"""PNG pictures of samples, drawn with Pillow (no plotting library needed).

Pictures say what they show: a caption band (recipe, step), a label band for rows of
classes, and the same facts as PNG text chunks (`gan-dist:*`, read with PIL's `Image.text`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

BAND = 14  # pixels of a text band (Pillow's built-in bitmap font is 11 pixels high)


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """`image` as PNG bytes, with `text` as tEXt chunks named gan-dist:KEY."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(f"gan-dist:{key}", str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _labelled(image: Image.Image, caption: str, row_labels: list[str] | None, row_height: int,
              pad: int) -> Image.Image:
    """`image` with a caption band on top and, when given, a row label band on the left."""
    font = ImageFont.load_default()
    draw0 = ImageDraw.Draw(image)
    left = max((int(draw0.textlength(label, font=font)) for label in row_labels), default=0) + 6 if row_labels else 0
    top = BAND if caption else 0
    width = max(image.width + left, int(draw0.textlength(caption, font=font)) + 6)
    canvas = Image.new(image.mode, (width, image.height + top), 255 if image.mode == "L" else "white")
    canvas.paste(image, (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if image.mode == "L" else (0, 0, 0)
    if caption:
        draw.text((3, 1), caption, fill=ink, font=font)
    for r, label in enumerate(row_labels or []):
        draw.text((3, top + pad + r * (row_height + pad) + max(0, (row_height - 11) // 2)), label, fill=ink, font=font)
    return canvas


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
    return png_bytes(image)


def image_grid_png(images: np.ndarray, columns: int = 8, pad: int = 2, caption: str = "",
                   row_labels: list[str] | None = None, text: dict[str, str] | None = None) -> bytes:
    """A grid of [N, C, H, W] images in [-1, 1] as PNG bytes (grey for 1 channel, RGB for 3),
    with an optional caption band, row labels (e.g. the class of each row) and text chunks."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    pixels = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, k = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top:top + h, left:left + w] = image.transpose(1, 2, 0)
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if caption or row_labels:
        picture = _labelled(picture, caption, row_labels, h, pad)
    return png_bytes(picture, {**(text or {}), **({"caption": caption} if caption else {}),
                               **({"rows": " | ".join(row_labels)} if row_labels else {})})
