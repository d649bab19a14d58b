"""Using a trained generator: `gan-dist sample` and `gan-dist eval`.

A checkpoint carries everything needed: the resolved config, G_ema's weights
and the data's metadata (shape, classes, mixture), so sampling needs no data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, first_line
from gan_dist.data.builtin import Mixture2D
from gan_dist.data.index import check_meta
from gan_dist.data.sources import resolve_source
from gan_dist.evaluate import evaluate_generator, generate, generate_images
from gan_dist.models import TASKS, build_models
from gan_dist.plan import data_shape
from gan_dist.rundir import check_writable
from gan_dist.visualize import image_grid_png, scatter_png


@dataclass
class Generator:
    cfg: Config
    G_ema: torch.nn.Module
    meta: dict
    step: int

    @property
    def task(self) -> str:
        return TASKS[self.cfg.model.arch]


def load_generator(path: str) -> Generator:
    """G_ema of checkpoint (or run directory) `path`. A damaged checkpoint (a config, state or
    data metadata that does not load, weights that do not fit the config) is a CheckpointError."""
    folder = ckpt.resolve_checkpoint(path)
    cfg = ckpt.read_config(folder)
    state = ckpt.load_shared(folder, need=("G_ema", "step"))
    meta = state.get("data_meta")
    if meta is None:
        raise ckpt.CheckpointError(f"{folder}: no data metadata (written by an older gan-dist?)")
    check_meta(meta, f"{folder}/state.pt data_meta")
    try:
        G, _ = build_models(cfg.model, data_shape(meta, cfg.model))
        G.load_state_dict(state["G_ema"])
    except (ValueError, RuntimeError, TypeError, AttributeError) as exc:  # not a state dict, or the wrong one
        raise ckpt.CheckpointError(f"{folder}: its weights do not fit model.arch {cfg.model.arch} "
                                   f"({first_line(exc) or type(exc).__name__})") from None
    return Generator(cfg, G.eval().requires_grad_(False), meta, int(state["step"]))


# The most samples in one PNG, and the most values (samples x values per sample): 1 GiB as float32.
MAX_GRID_SAMPLES, MAX_GRID_VALUES = 10_000, 1 << 28


def check_grid_size(n: int, sample_shape: list[int]) -> None:
    """A grid PNG of n samples is made in memory at once: bounded."""
    values = n * int(np.prod(sample_shape))
    if n > MAX_GRID_SAMPLES or values > MAX_GRID_VALUES:
        raise ValueError(f"--n {n:,} samples of {'x'.join(map(str, sample_shape))} ({values:,} values) are too many "
                         f"for one PNG (at most {MAX_GRID_SAMPLES:,} samples and {MAX_GRID_VALUES:,} values): "
                         f"ask for fewer")


def sample_png(gen: Generator, n: int, class_label: int | None, seed: int) -> bytes:
    """A PNG of n samples: an image grid, or for 2-D data a scatter over the real mixture."""
    check_grid_size(n, gen.meta["sample_shape"])
    if class_label is not None:
        if gen.task != "conditional":
            raise ValueError(f"--class needs a conditional model, this one is {gen.cfg.model.arch}")
        if not 0 <= class_label < gen.meta["num_classes"]:
            raise ValueError(f"--class {class_label} is out of range: the model has {gen.meta['num_classes']} classes")
    if gen.task == "super_resolution":
        raise ValueError("a super-resolution model upscales an image: give --input LR.png")
    if gen.meta["kind"] == "points":
        fake = generate(gen.G_ema, n, gen.cfg.model.z_dim, seed, "cpu")
        mixture = gen.meta.get("mixture")
        real = Mixture2D.from_meta("data", mixture).sample(1000, np.random.default_rng(seed))[0] if mixture else fake
        return scatter_png(real, fake)
    if class_label is None:
        classes = gen.meta["num_classes"] if gen.task == "conditional" else 0
        images, _ = generate_images(gen.G_ema, n, gen.cfg.model.z_dim, seed, "cpu", classes)
    else:
        z = torch.randn(n, gen.cfg.model.z_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            images = gen.G_ema(z, torch.full((n,), class_label)).numpy()
    return image_grid_png(images, columns=max(1, int(np.ceil(np.sqrt(n)))))


def upscale_png(gen: Generator, lr_path: str) -> bytes:
    """The super-resolved version of image `lr_path`."""
    if gen.task != "super_resolution":
        raise ValueError(f"--input needs a super-resolution model, this one is {gen.cfg.model.arch}")
    channels = gen.meta["sample_shape"][0]
    try:
        image = Image.open(lr_path).convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"--input {lr_path}: not a readable image ({exc})") from None
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1
    x = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        out = gen.G_ema(x).clamp(-1, 1)
    return image_grid_png(out.numpy(), columns=1, pad=0)


def evaluate_checkpoint(path: str, data: str | None) -> dict:
    """The quality metrics of a checkpoint's G_ema on its data (or on `data`)."""
    gen = load_generator(path)
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
