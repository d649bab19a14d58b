"""Using a trained generator: `gan-dist sample` and `gan-dist eval`.

A checkpoint carries everything needed: the resolved config, G_ema's weights
and the data's metadata (shape, classes, mixture), so sampling needs no data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gan_dist import checkpoint as ckpt
from gan_dist import superres
from gan_dist.config import Config, first_line
from gan_dist.data import photos
from gan_dist.data.builtin import Mixture2D
from gan_dist.data.index import check_meta
from gan_dist.data.sources import resolve_source
from gan_dist.evaluate import HIGH_QUALITY_STDS, evaluate_generator, generate
from gan_dist.models import build_models, model_task
from gan_dist.plan import data_shape
from gan_dist.rundir import check_writable
from gan_dist.trainer.ema import sampling_generator
from gan_dist.visualize import image_grid_png, png_bytes, scatter_png


@dataclass
class Generator:
    cfg: Config
    G_ema: torch.nn.Module
    meta: dict
    step: int

    @property
    def task(self) -> str:
        return model_task(self.cfg.model.arch)


def load_generator(path: str) -> Generator:
    """G_ema of checkpoint (or run directory) `path`, as it is sampled and evaluated (with its own
    BatchNorm statistics under schedule.ema_bn recompute). A damaged checkpoint (a config, state
    or data metadata that does not load, weights that do not fit the config) is a CheckpointError."""
    folder = ckpt.resolve_checkpoint(path)
    cfg = ckpt.read_config(folder)
    state = ckpt.load_shared(folder, need=("G_ema", "step"))
    meta = state.get("data_meta")
    if meta is None:
        raise ckpt.CheckpointError(f"{folder}: no data metadata (written by an older gan-dist?)")
    check_meta(meta, f"{folder}/state.pt data_meta")
    try:
        shape = data_shape(meta, cfg.model)
        G, _ = build_models(cfg.model, shape)
        G.load_state_dict(state["G_ema"])
    except (ValueError, RuntimeError, TypeError, AttributeError) as exc:  # not a state dict, or the wrong one
        raise ckpt.CheckpointError(f"{folder}: its weights do not fit model.arch {cfg.model.arch} "
                                   f"({first_line(exc) or type(exc).__name__})") from None
    G = sampling_generator(G.eval().requires_grad_(False), cfg, model_task(cfg.model.arch), shape.num_classes)
    return Generator(cfg, G, meta, int(state["step"]))


def class_names(meta: dict) -> list[str]:
    return list(meta.get("classes") or [str(k) for k in range(meta.get("num_classes", 0))])


def pick_classes(gen: Generator, classes: list[int] | None) -> list[int]:
    """The classes to generate: those asked for (a conditional model only), else all of them."""
    if classes is None:
        return list(range(gen.meta["num_classes"])) if gen.task == "conditional" else []
    if gen.task != "conditional":
        raise ValueError(f"--class needs a conditional model, this one is {gen.cfg.model.arch}")
    for k in classes:
        if not 0 <= k < gen.meta["num_classes"]:
            raise ValueError(f"--class {k} is out of range: the model has {gen.meta['num_classes']} classes")
    return classes


@torch.no_grad()
def generate_labelled(G, labels: np.ndarray | None, n: int, z_dim: int, seed: int, batch: int = 256,
                      progress=None) -> Iterator[np.ndarray]:
    """n images of G in batches (with `labels`, one per image, for a conditional G), from a
    noise generator seeded by `seed` alone."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        z = torch.randn(m, z_dim, generator=gen)
        images = G(z, torch.from_numpy(labels[start:start + m])) if labels is not None else G(z)
        if progress is not None:
            progress(m)
        yield images.float().numpy()


def caption(gen: Generator) -> tuple[str, dict]:
    text = {"recipe": gen.cfg.recipe, "step": str(gen.step), "arch": gen.cfg.model.arch}
    return f"{gen.cfg.recipe}: G_ema at step {gen.step}", text


# The most samples in one PNG, and the most values (samples x values per sample): 1 GiB as float32.
MAX_GRID_SAMPLES, MAX_GRID_VALUES = 10_000, 1 << 28


def check_grid_size(n: int, sample_shape: list[int]) -> None:
    """A grid PNG of n samples is made in memory at once: bounded."""
    values = n * int(np.prod(sample_shape))
    if n > MAX_GRID_SAMPLES or values > MAX_GRID_VALUES:
        raise ValueError(f"--n {n:,} samples of {'x'.join(map(str, sample_shape))} ({values:,} values) are too many "
                         f"for one PNG (at most {MAX_GRID_SAMPLES:,} samples and {MAX_GRID_VALUES:,} values): "
                         f"ask for fewer, or write a folder of samples (--out DIR)")


def sample_png(gen: Generator, n: int, classes: list[int] | None, seed: int, per_class: int | None = None) -> bytes:
    """A PNG of samples: an image grid (for a conditional model one row per class, labelled),
    or for 2-D data a scatter over the real mixture."""
    picked = pick_classes(gen, classes)
    check_grid_size((per_class or max(1, n // len(picked))) * len(picked) if picked else n, gen.meta["sample_shape"])
    if gen.task == "super_resolution":
        raise ValueError("a super-resolution model upscales an image: give --input LR.png")
    title, text = caption(gen)
    if gen.meta["kind"] == "points":
        fake = generate(gen.G_ema, n, gen.cfg.model.z_dim, seed, "cpu")
        if not gen.meta.get("mixture"):
            return scatter_png(None, fake, caption=title, text=text)  # no real mixture to show
        mixture = Mixture2D.from_meta("data", gen.meta["mixture"])
        real = mixture.sample(1000, np.random.default_rng(seed))[0]
        return scatter_png(real, fake, mixture.means, HIGH_QUALITY_STDS * mixture.std, caption=title, text=text)
    if not picked:
        images = np.concatenate(list(generate_labelled(gen.G_ema, None, n, gen.cfg.model.z_dim, seed)))
        return image_grid_png(images, columns=max(1, int(np.ceil(np.sqrt(n)))), caption=title, text=text)
    columns = per_class or max(1, n // len(picked))
    labels = np.repeat(np.asarray(picked, dtype=np.int64), columns)
    images = np.concatenate(list(generate_labelled(gen.G_ema, labels, len(labels), gen.cfg.model.z_dim, seed)))
    names = class_names(gen.meta)
    return image_grid_png(images, columns=columns, caption=title, text=text,
                          row_labels=[f"{k} {names[k]}" for k in picked])


def class_folder(k: int, name: str) -> str:
    """A class's folder: its index first, so that sorted folders keep the classes' order
    (`gan-dist data pack` numbers classes by their sorted folder names)."""
    return f"{k:03d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def sample_folder(gen: Generator, out: Path, n: int, classes: list[int] | None, seed: int,
                  per_class: int | None = None, progress=None) -> int:
    """Write samples as one PNG file each into folder `out` (one subfolder per class for a
    conditional model, so `gan-dist data pack OUT` packs them as a labelled data set): n in
    all, or `per_class` of each class. Written into a temporary folder renamed at the end.
    Each PNG names its recipe, step and class in text chunks only (no band: they are data)."""
    picked = pick_classes(gen, classes)
    if gen.meta["kind"] != "image" or gen.task == "super_resolution":
        raise ValueError("a folder of samples needs a model that makes images from noise")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder")
    if picked:
        count = per_class or -(-n // len(picked))
        labels = np.repeat(np.asarray(picked, dtype=np.int64), count)
    else:
        labels = None
    total = len(labels) if labels is not None else n
    names = class_names(gen.meta)
    text = caption(gen)[1]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        i = 0
        for images in generate_labelled(gen.G_ema, labels, total, gen.cfg.model.z_dim, seed, progress=progress):
            for image in images:
                k = int(labels[i]) if labels is not None else None
                folder = tmp / class_folder(k, names[k]) if k is not None else tmp
                folder.mkdir(exist_ok=True)
                pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
                picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
                label = {"class": f"{k} {names[k]}"} if k is not None else {}
                (folder / f"{i:06d}.png").write_bytes(png_bytes(picture, {**text, **label}))
                i += 1
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return total


# LR pixels of one tile of `sample --input` (memory stays bounded whatever the photo's size).
UPSCALE_TILE = 128


def read_input_image(path: str, max_pixels: int = photos.MAX_PIXELS) -> Image.Image:
    """`sample --input`: an image file, decoded, its size checked before decoding; anything
    else is a one-line ValueError."""
    try:
        with photos.open_image(path, f"--input {path}", max_pixels, hint="") as image, \
                photos.pixel_limit(max_pixels):
            image.load()
            return image.copy()
    except photos.ImageTooLarge:
        raise
    except FileNotFoundError:
        raise ValueError(f"--input {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--input {path}: is a folder, not an image file") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:  # Pillow's ways to fail
        raise ValueError(f"--input {path}: not a readable image ({first_line(exc) or type(exc).__name__})") from None


def upscale_image(gen: Generator, image: Image.Image, tile: int = UPSCALE_TILE) -> Image.Image:
    """`image` upscaled by G_ema (fully convolutional, in overlapping tiles). The model's colour
    channels come from the image (grey or RGB as G was trained; an RGB model turns a grey image
    back to grey); an alpha channel is upscaled bicubically and put back."""
    if gen.task != "super_resolution":
        raise ValueError(f"--input needs a super-resolution model, this one is {gen.cfg.model.arch}")
    channels, scale = gen.meta["sample_shape"][0], gen.cfg.model.sr_scale
    grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    if image.mode == "P" and "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
    colour = image.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(colour).reshape(colour.height, colour.width, -1)
    sr = superres.upscale(gen.G_ema, superres.to_tensor(pixels), scale, tile)
    out = Image.fromarray(superres.to_pixels(sr).squeeze(2) if channels == 1 else superres.to_pixels(sr))
    if grey and channels == 3:
        out = out.convert("L")
    if alpha is not None:
        out.putalpha(alpha.resize(out.size, Image.Resampling.BICUBIC))
    return out


def upscale_png(gen: Generator, path: str) -> bytes:
    """The super-resolved version of image file `path`, as PNG bytes."""
    if gen.task != "super_resolution":
        raise ValueError(f"--input needs a super-resolution model, this one is {gen.cfg.model.arch}")
    # The recipe, step and input in text chunks only: the picture itself is the upscaled image.
    return png_bytes(upscale_image(gen, read_input_image(path)), {**caption(gen)[1], "input": Path(path).name})


def evaluate_checkpoint(gen: Generator, data: str | None) -> dict:
    """The quality metrics of a loaded checkpoint's G_ema on its data (or on `data`), with its step."""
    index = resolve_source(data or gen.cfg.data.source, gen.cfg.data.cache_dir)
    if data_shape(index.meta) != data_shape(gen.meta):
        raise ValueError(f"--data {data}: its samples are {index.meta['sample_shape']}, the model makes "
                         f"{gen.meta['sample_shape']}")
    return {"step": gen.step, **evaluate_generator(gen.G_ema, gen.cfg, index, "cpu")}


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=float)


def check_png_out(path: str) -> Path:
    """--out, checked before any work: a *.png that is not a folder, in a folder that exists or
    can be made, and is writable (rundir.check_writable says how that is checked)."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {path}: the output is a PNG file, name it *.png")
    if out.is_dir():
        raise ValueError(f"--out {path} is a folder: name the PNG file to write")
    check_writable(out.parent.absolute(), f"--out {path}")
    return out


def write_png(path: str, data: bytes) -> None:
    """Write atomically (a temporary file renamed into place, removed if anything fails)."""
    out = check_png_out(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as exc:
        raise ValueError(f"--out {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
