"""Super-resolution of whole images, and its evaluation as the field reports it.

The protocol of the SR literature since Dong et al. 2014 (SRCNN) and of SRGAN
(Ledig et al. 2017, section 3.1): each HR photo is cut to a multiple of the
scale ("mod crop"), downscaled bicubically to its LR input, and upscaled by G;
PSNR and SSIM are computed on the luma (Y of ITU-R BT.601 YCbCr, as MATLAB's
rgb2ycbcr, range 16..235) after `scale` pixels are shaved from each border,
where G and bicubic upsampling have too little context. Bicubic upsampling of
the same LR input is reported beside G. The LR input is made with the same
antialiased bicubic downscale as in training (`models.srgan.downsample`).

G (SRResNet) is fully convolutional, so it upscales an image of any size. To
bound memory on large photos it runs on LR tiles with context on each side, of
which only the centre is kept. The context is G's receptive radius
(`receptive_radius`: the LR pixels an output pixel sees beyond its own), so
the tiled result equals the whole-image one up to float rounding (BatchNorm in
eval mode and PReLU act per pixel).

Perceptual quality: the Inception features (gan_dist.quality) of non-overlapping
HR-sized crops of G's output, and of bicubic's, against the same crops of the
HR photos: FID, precision and recall on patches, as SR papers that report FID
do for whole-image sets too small for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dist.data import photos
from gan_dist.data.errors import DataError
from gan_dist.models.srgan import downsample

# ITU-R BT.601 luma of [0, 1] RGB, scaled to 8-bit studio range 16..235 (MATLAB's rgb2ycbcr).
Y_WEIGHTS = (65.481, 128.553, 24.966)
# LR pixels of context on each side of a tile, for a G whose receptive field is not known.
TILE_OVERLAP = 16
# Side of the HR crops whose Inception features give the crop FID (SRGAN's HR patch size).
FID_CROP = 96


def luma(x01: Tensor) -> Tensor:
    """Y of [N, 3, H, W] RGB in [0, 1], as [N, 1, H, W] in [16, 235] / 255; grey passes through."""
    if x01.shape[1] == 1:
        return x01
    weights = x01.new_tensor(Y_WEIGHTS)[None, :, None, None]
    return (16 + (x01 * weights).sum(1, keepdim=True)) / 255


def shave(x: Tensor, border: int) -> Tensor:
    return x[..., border:-border, border:-border] if border else x


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM (Wang et al. 2004) per image of [N, C, H, W] images in [0, 1]; 11x11 Gaussian
    window (sigma 1.5), valid positions only, K1 0.01, K2 0.03, as the authors' code."""
    c = a.shape[1]
    window = _gaussian_window().to(a).expand(c, 1, -1, -1)
    conv = lambda t: F.conv2d(t, window, groups=c)  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b, cov = conv(a * a) - mu_a ** 2, conv(b * b) - mu_b ** 2, conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image of images in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1 / mse)


def y_scores(sr: Tensor, hr: Tensor, border: int) -> tuple[Tensor, Tensor]:
    """PSNR and SSIM per image on the Y channel, `border` pixels shaved, of [N, C, H, W]
    images in [-1, 1] (quantised to 8 bits first, as the saved images a paper measures)."""
    to01 = lambda t: ((t.double().clamp(-1, 1) + 1) * 127.5).round() / 255  # noqa: E731
    a, b = shave(luma(to01(sr)), border), shave(luma(to01(hr)), border)
    return psnr(a, b), ssim(a, b)


def receptive_radius(G) -> int:
    """How far (in LR pixels) an SRResNet output pixel sees beyond its own LR pixel: the 9x9
    head, two 3x3 convs per residual block and one after them, the x2 steps' 3x3 convs, the
    9x9 tail (the last two at HR scales, rounded up)."""
    blocks = sum(1 for m in G.blocks if m.__class__.__name__ == "ResidualBlock")
    steps = int(math.log2(G.scale))
    return 4 + 2 * blocks + 1 + steps + 1


@torch.no_grad()
def upscale(G, lr: Tensor, scale: int, tile: int = 0, overlap: int | None = None, device="cpu") -> Tensor:
    """G(lr) on the CPU for [N, C, h, w] LR images in [-1, 1] of any size: whole, or in tiles of
    `tile` LR pixels run with `overlap` pixels of context on each side (tile 0: whole; overlap
    None: G's receptive radius)."""
    if overlap is None:
        overlap = receptive_radius(G) if hasattr(G, "blocks") else TILE_OVERLAP
    n, c, h, w = lr.shape
    if not tile or (h <= tile and w <= tile):
        return G(lr.to(device)).float().cpu().clamp(-1, 1)
    out = torch.empty(n, c, h * scale, w * scale)
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(h, top + tile), min(w, left + tile)
            t0, l0 = max(0, top - overlap), max(0, left - overlap)
            t1, l1 = min(h, bottom + overlap), min(w, right + overlap)
            sr = G(lr[..., t0:t1, l0:l1].to(device)).float().cpu()
            dy, dx = (top - t0) * scale, (left - l0) * scale
            out[..., top * scale:bottom * scale, left * scale:right * scale] = \
                sr[..., dy:dy + (bottom - top) * scale, dx:dx + (right - left) * scale]
    return out.clamp(-1, 1)


def bicubic(lr: Tensor, scale: int) -> Tensor:
    return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def mod_crop(pixels: np.ndarray, scale: int) -> np.ndarray:
    """The top-left part of HxWxC `pixels` whose sides are multiples of `scale`."""
    return pixels[:pixels.shape[0] - pixels.shape[0] % scale, :pixels.shape[1] - pixels.shape[1] % scale]


def to_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 [H, W, C] -> float [1, C, H, W] in [-1, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()


def to_pixels(x: Tensor) -> np.ndarray:
    """[1, C, H, W] in [-1, 1] -> uint8 [H, W, C]."""
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def photo_paths(spec: str) -> list[Path]:
    """The photos `eval.sr_photos` names: builtin:photos-eval, a folder of images, or one file."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in photos.PHOTO_SPLITS:
            raise DataError(f"eval.sr_photos {spec}: the builtin photographs are "
                            f"{', '.join('builtin:' + n for n in photos.PHOTO_SPLITS)}")
        return photos.photo_files(name)
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if found:
            return found
        raise DataError(f"eval.sr_photos {spec}: a folder without images (png, jpg, webp, bmp)")
    raise DataError(f"eval.sr_photos {spec}: no such file or folder")


def fid_crops(x: Tensor, size: int = FID_CROP) -> Tensor:
    """The non-overlapping size x size crops of [1, C, H, W] `x`, row by row: [K, C, size, size]."""
    patches = x.unfold(2, size, size).unfold(3, size, size)  # [1, C, rows, cols, size, size]
    return patches[0].permute(1, 2, 0, 3, 4).reshape(-1, x.shape[1], size, size)


@dataclass
class PhotoScores:
    """Per photo: Y-PSNR and Y-SSIM of G and of bicubic; crops for the Inception metrics."""

    names: list[str] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    psnr_bicubic: list[float] = field(default_factory=list)
    ssim_bicubic: list[float] = field(default_factory=list)
    crops: dict[str, list[Tensor]] = field(default_factory=lambda: {"sr": [], "bicubic": [], "hr": []})

    def summary(self) -> dict:
        mean = lambda v: float(np.mean(v))  # noqa: E731
        return {"psnr_y": mean(self.psnr), "ssim_y": mean(self.ssim), "psnr_y_bicubic": mean(self.psnr_bicubic),
                "ssim_y_bicubic": mean(self.ssim_bicubic), "sr_photos": len(self.names),
                "per_photo": {n: {"psnr_y": p, "ssim_y": s, "psnr_y_bicubic": pb, "ssim_y_bicubic": sb}
                              for n, p, s, pb, sb in zip(self.names, self.psnr, self.ssim, self.psnr_bicubic,
                                                         self.ssim_bicubic)}}


@torch.no_grad()
def score_photos(G, paths: list[Path], scale: int, channels: int, tile: int = 0, device="cpu",
                 keep_crops: bool = False) -> PhotoScores:
    """Each photo mod-cropped, downscaled, upscaled by G and by bicubic, and scored on Y."""
    out = PhotoScores()
    for path in paths:
        pixels = mod_crop(photos.load_rgb(path, channels), scale)
        if min(pixels.shape[:2]) < 4 * scale:
            raise DataError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} is too small to evaluate x{scale} "
                            f"super-resolution on")
        hr = to_tensor(pixels)
        lr = downsample(hr, scale)
        sr, up = upscale(G, lr, scale, tile, device=device), bicubic(lr, scale)
        for name, img in (("", sr), ("_bicubic", up)):
            p, s = y_scores(img, hr, scale)
            getattr(out, f"psnr{name}").append(float(p[0]))
            getattr(out, f"ssim{name}").append(float(s[0]))
        out.names.append(path.name)
        if keep_crops:
            for name, img in (("sr", sr), ("bicubic", up), ("hr", hr)):
                out.crops[name].append(fid_crops(img))
    return out


def crop_inception_metrics(scores: PhotoScores, metrics=("fid", "pr"), device="cpu") -> dict:
    """FID (and precision/recall) of G's crops and of bicubic's against the HR crops."""
    # Deferred on purpose: the Inception network loads only for an eval that asks for it.
    from gan_dist.quality import distances
    from gan_dist.quality.inception import embed

    feats = {name: embed(torch.cat(crops), device=device) for name, crops in scores.crops.items()}
    result: dict = {"crop_n": len(feats["hr"]), "crop_size": FID_CROP}
    for name, suffix in (("sr", ""), ("bicubic", "_bicubic")):
        if "fid" in metrics:
            result[f"crop_fid{suffix}"] = distances.frechet_distance(feats["hr"], feats[name])
        if "pr" in metrics and len(feats["hr"]) > distances.K_NEAREST:
            result[f"crop_precision{suffix}"], result[f"crop_recall{suffix}"] = \
                distances.precision_recall(feats["hr"], feats[name])
    return result


def evaluate_photos(G, paths: list[Path], scale: int, channels: int, tile: int = 0, device="cpu",
                    inception: bool = False, metrics=("fid", "pr")) -> dict:
    """The summary dict of `score_photos`, with the crop Inception metrics when asked."""
    scores = score_photos(G, paths, scale, channels, tile, device, keep_crops=inception)
    result = scores.summary()
    if inception:
        result.update(crop_inception_metrics(scores, metrics, device))
    return result
