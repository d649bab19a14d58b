"""PNG pictures of samples, drawn with Pillow (no plotting library needed).

Pictures say what they show: a caption band (recipe, step), a label band for rows of
classes, axes with numbers and the real modes on 2-D scatter plots, and the same facts as
PNG text chunks (`gan-dist:*`, read with PIL's `Image.text`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

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


def png_text(png: bytes) -> dict[str, str]:
    """The gan-dist:KEY text chunks of a PNG, by KEY (caption, rows, step, recipe, ...); {}
    for a PNG without them or bytes that are not a PNG."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            chunks = dict(getattr(image, "text", {}))
    except (OSError, SyntaxError, ValueError):  # Pillow's errors for bytes that are not an image
        return {}
    return {key[len("gan-dist:"):]: value for key, value in chunks.items() if key.startswith("gan-dist:")}


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


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    raw = (hi - lo) / max(count, 1) or 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step) + 1)]


# Colours of the scatter plot: the data, G's samples, the modes; the axes.
REAL_INK, FAKE_INK, MODE_INK, INK = (170, 170, 170), (220, 30, 30), (20, 20, 160), (0, 0, 0)


@dataclass
class _Axes:
    """A square of `size` pixels at (left, top) showing the square of side `span` (data units)
    around `centre`."""

    left: int
    top: int
    size: int
    centre: np.ndarray
    span: float

    def to_px(self, points: np.ndarray) -> np.ndarray:
        uv = (np.asarray(points, dtype=np.float64).reshape(-1, 2) - self.centre) / self.span + 0.5
        return np.stack([self.left + uv[:, 0] * self.size, self.top + (1 - uv[:, 1]) * self.size], axis=1)

    def contains(self, x: float, y: float) -> bool:
        return self.left <= x < self.left + self.size and self.top <= y < self.top + self.size

    def draw(self, draw: ImageDraw.ImageDraw, font) -> None:
        """The frame, and ticks with their numbers on the bottom (x) and the left (y)."""
        right, bottom = self.left + self.size, self.top + self.size
        draw.rectangle([self.left, self.top, right, bottom], outline=INK)
        for axis in (0, 1):
            for value in nice_ticks(self.centre[axis] - self.span / 2, self.centre[axis] + self.span / 2):
                label = f"{value:g}"
                at = self.centre.copy()
                at[axis] = value
                pos = self.to_px(at)[0][axis]
                if axis == 0:
                    draw.line([pos, bottom, pos, bottom + 4], fill=INK)
                    draw.text((pos - draw.textlength(label, font=font) / 2, bottom + 5), label, fill=INK, font=font)
                else:
                    draw.line([self.left - 4, pos, self.left, pos], fill=INK)
                    draw.text((self.left - 6 - draw.textlength(label, font=font), pos - 6), label, fill=INK,
                              font=font)


def _dots(draw: ImageDraw.ImageDraw, axes: _Axes, points: np.ndarray, color: tuple[int, int, int]) -> int:
    """Draw the points that fall inside the axes; how many did."""
    count = 0
    for x, y in axes.to_px(points):
        if axes.contains(x, y):
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=color)
            count += 1
    return count


def _modes(draw: ImageDraw.ImageDraw, axes: _Axes, modes: np.ndarray, radius: float) -> None:
    """A cross on each mode's centre and, when it shows, a circle of `radius` (data units)."""
    radius_px = radius / axes.span * axes.size
    for x, y in axes.to_px(modes):
        draw.line([x - 4, y, x + 4, y], fill=MODE_INK)
        draw.line([x, y - 4, x, y + 4], fill=MODE_INK)
        if radius_px >= 2:
            draw.ellipse([x - radius_px, y - radius_px, x + radius_px, y + radius_px], outline=MODE_INK)


def scatter_png(real: np.ndarray | None, fake: np.ndarray, modes: np.ndarray | None = None, mode_radius: float = 0.0,
                caption: str = "", text: dict[str, str] | None = None, size: int = 512,
                margin: float = 0.1) -> bytes:
    """2-D samples on square axes fitted to the real data (without it, to the generated data):
    real points in grey, generated ones in red, each real mode's centre marked with a cross
    and, given `mode_radius` (the eval's high-quality distance, 3 standard deviations), a
    circle of that radius. The axes carry ticks and numbers in the data's coordinates; a
    caption band on top, a legend below (with the count of generated points off the axes);
    caption, legend and `text` are also PNG text chunks."""
    fitted = real if real is not None else fake
    lo, hi = fitted.min(axis=0), fitted.max(axis=0)
    font = ImageFont.load_default()
    top = BAND if caption else 4
    axes = _Axes(left=44, top=top, size=size, centre=(lo + hi) / 2, span=float(max(hi - lo)) * (1 + 2 * margin) or 1.0)
    image = Image.new("RGB", (axes.left + size + 10, top + size + 46), "white")
    draw = ImageDraw.Draw(image)
    axes.draw(draw, font)
    if real is not None:
        _dots(draw, axes, real, REAL_INK)
    outside = len(fake) - _dots(draw, axes, fake, FAKE_INK)
    legend = [(f"grey: real ({len(real)})   " if real is not None else "") + f"red: generated ({len(fake)}"
              + (f", {outside} off the axes)" if outside else ")")]
    if modes is not None:
        _modes(draw, axes, modes, mode_radius)
        legend.append(f"blue +: the {len(modes)} modes"
                      + (f", circles of radius {mode_radius:g} (high quality)" if mode_radius else ""))
    for k, line in enumerate(legend):
        draw.text((axes.left, top + size + 19 + 12 * k), line, fill=INK, font=font)
    if caption:
        draw.text((3, 1), caption, fill=INK, font=font)
    return png_bytes(image, {**(text or {}), **({"caption": caption} if caption else {}),
                             "legend": "; ".join(legend), "axes": "x and y: the data's coordinates"})


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
