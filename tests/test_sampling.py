"""`gan-dist sample`: labelled grids (one row per class for a conditional model, a caption and
PNG text chunks), 2-D scatter plots with axes and the real modes marked, folders of single
PNGs that `gan-dist data pack` packs as a data set, and upscaled images; every PNG names its
recipe and step (and class) in text chunks."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.cli import main
from gan_dist.visualize import INK, MODE_INK, scatter_png

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory, cache_dir) -> Path:
    storage = tmp_path_factory.mktemp("runs")
    assert main(["train", "cgan-digits", "--no-ray", "--max-steps", "4", "--storage", str(storage), "--name", "c",
                 "--set", "train.log_every=2", "--set", "metrics.port=0", "--set", "monitor.class_coverage=false",
                 "--set", "eval.num_samples=32"]) == 0
    return storage / "c"


def test_a_conditional_grid_has_a_labelled_row_per_class(cgan_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(cgan_run), "--per-class", "3", "--class", "1,4", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.text["gan-dist:rows"] == "1 1 | 4 4" and image.text["gan-dist:step"] == "4"
    assert image.text["gan-dist:recipe"] == "cgan-digits"
    # The run's own grids say what they show, too.
    grid = Image.open(io.BytesIO((cgan_run / "samples" / "step-000004.png").read_bytes()))
    assert grid.text["gan-dist:rows"].split(" | ") == [f"{k} {k}" for k in range(10)]
    assert grid.text["gan-dist:caption"] == "cgan-digits: G_ema at step 4"


def test_a_folder_of_samples_packs_as_a_labelled_data_set(cgan_run, tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["sample", str(cgan_run), "--per-class", "5", "--class", "2,7", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["002-2", "007-7"]
    assert all(len(list((out / c).glob("*.png"))) == 5 for c in ("002-2", "007-7"))
    single = Image.open(next((out / "007-7").glob("*.png")))
    assert single.size == (32, 32)  # a sample as it is: its facts in text chunks, not in a band
    assert (single.text["gan-dist:class"], single.text["gan-dist:recipe"], single.text["gan-dist:step"]) == (
        "7 7", "cgan-digits", "4")
    assert "wrote 10 images" in capsys.readouterr().out
    assert main(["data", "pack", str(out), "--out", str(tmp_path / "packed")]) == 0
    assert "packed 10 samples (2 classes" in capsys.readouterr().out
    # An existing folder that is not empty is refused, and nothing is left behind.
    assert main(["sample", str(cgan_run), "--n", "4", "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "synthetic"]


def test_an_upscaled_image_names_its_recipe_step_and_input(tmp_path, capsys, cache_dir):
    assert main(["train", "srgan-shapes", "--no-ray", "--max-steps", "2", "--storage", str(tmp_path), "--name", "sr",
                 "--set", "model.channels=8", "--set", "model.sr_blocks=1", "--set", "data.batch_size=4",
                 "--set", "metrics.port=0", "--set", "eval.num_samples=8"]) == 0
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "lr.png")
    out = tmp_path / "sr.png"
    assert main(["sample", str(tmp_path / "sr"), "--input", str(tmp_path / "lr.png"), "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (32, 32)  # x4, and nothing drawn around it
    assert (image.text["gan-dist:recipe"], image.text["gan-dist:step"], image.text["gan-dist:input"]) == (
        "srgan-shapes", "2", "lr.png")


def test_class_options_need_a_conditional_model(tmp_path, capsys, cache_dir):
    assert main(["train", "--no-ray", "--max-steps", "2", "--storage", str(tmp_path), "--name", "r",
                 "--set", "model.hidden=8", "--set", "metrics.port=0", "--set", "eval.num_samples=64"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "r"), "--class", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "--class needs a conditional model" in capsys.readouterr().err


def test_a_scatter_plot_has_axes_numbers_and_the_modes():
    """Reals spanning [-1, 1]^2 put the axes' centre (0, 0) at the middle of the 512-pixel plot
    square (left edge at x=44, top at y=14 under the caption band): the mode there is a blue
    cross inside a circle of its high-quality radius; the frame and tick numbers are drawn."""
    real = np.array([[-1.0, -1.0], [1.0, 1.0]])
    fake = np.array([[0.5, 0.5], [40.0, 0.0]])
    png = scatter_png(real, fake, modes=np.array([[0.0, 0.0]]), mode_radius=0.3, caption="ring8: G_ema at step 7",
                      text={"recipe": "ring8", "step": "7"})
    image = Image.open(io.BytesIO(png))
    pixels = np.asarray(image.convert("RGB"))
    left, top, size = 44, 14, 512
    assert tuple(pixels[top + size // 2, left + size // 2]) == MODE_INK  # the cross on the mode
    radius_px = round(0.3 / 2.4 * size)
    assert tuple(pixels[top + size // 2, left + size // 2 + radius_px]) == MODE_INK  # its circle
    assert (pixels[top:top + size, left] == INK).all()  # the frame's left side: the y axis
    assert (pixels[top + size + 5:top + size + 16, left:left + size] < 100).any()  # tick numbers under x
    assert (pixels[top:top + size, :left - 6] < 100).any()  # and left of y
    assert image.text["gan-dist:step"] == "7" and image.text["gan-dist:recipe"] == "ring8"
    assert image.text["gan-dist:caption"] == "ring8: G_ema at step 7"
    assert "generated (2, 1 off the axes)" in image.text["gan-dist:legend"]
    assert "the 1 modes, circles of radius 0.3" in image.text["gan-dist:legend"]


def test_a_2d_run_and_its_samples_say_what_they_show(tmp_path, capsys, cache_dir):
    assert main(["train", "--no-ray", "--max-steps", "2", "--storage", str(tmp_path), "--name", "r",
                 "--set", "model.hidden=8", "--set", "metrics.port=0", "--set", "eval.num_samples=64"]) == 0
    grid = Image.open(tmp_path / "r" / "samples" / "step-000002.png")
    assert grid.text["gan-dist:caption"] == "ring8: G_ema at step 2"
    assert "the 8 modes, circles of radius 0.03" in grid.text["gan-dist:legend"]
    assert main(["sample", str(tmp_path / "r"), "--n", "100", "--out", str(tmp_path / "s.png")]) == 0
    sample = Image.open(tmp_path / "s.png")
    assert sample.text["gan-dist:step"] == "2" and sample.text["gan-dist:recipe"] == "ring8"
    assert "red: generated (100" in sample.text["gan-dist:legend"] and "8 modes" in sample.text["gan-dist:legend"]


# G_ema's BatchNorm statistics (schedule.ema_bn) -------------------------------------------


def _garbled_dcgan(num_classes: int = 0):
    """A DCGAN G (32x32, 1 channel) whose BatchNorm running statistics describe nothing it makes."""
    from gan_dist.config import ModelConfig
    from gan_dist.models import DataShape, build_models

    torch.manual_seed(0)
    G, _ = build_models(ModelConfig(arch="cgan" if num_classes else "dcgan", z_dim=16, channels=8),
                        DataShape("image", (1, 32, 32), num_classes))
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(50.0)
    return G.eval()


@pytest.mark.parametrize("num_classes", [0, 10])
def test_g_emas_recomputed_batchnorm_statistics_fit_its_own_activations(num_classes):
    from gan_dist.trainer.ema import with_own_bn_stats

    G = _garbled_dcgan(num_classes)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    own = with_own_bn_stats(G, 16, num_classes, seed=1, samples=2048, batch=256)
    # A copy: G's weights, its statistics and its mode are untouched.
    assert own is not G and not G.training and not own.training
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    # Deterministic: the same seed gives the same statistics (every rank recomputes its own).
    again = with_own_bn_stats(G, 16, num_classes, seed=1, samples=2048, batch=256)
    assert all(torch.equal(a, b) for a, b in zip(own.buffers(), again.buffers()))
    # model.sync_batchnorm's BatchNorm (collective in training mode) recomputes alike, locally.
    from gan_dist.runtime import convert_sync_batchnorm

    synced = with_own_bn_stats(convert_sync_batchnorm(copy.deepcopy(G), torch.device("cpu")), 16, num_classes,
                               seed=1, samples=2048, batch=256)
    assert all(torch.allclose(a.float(), b.float()) for a, b in zip(own.buffers(), synced.buffers()))
    z = torch.randn(1024, 16, generator=torch.Generator().manual_seed(2))
    inputs = (z, torch.arange(1024) % num_classes) if num_classes else (z,)
    with torch.no_grad():
        batch_stats = own.train()(*inputs)  # each BatchNorm normalises by this batch's own statistics
        own.eval()
        recomputed, stale = own(*inputs), G(*inputs)
    # With the recomputed statistics eval mode is batch mode within sampling noise; with the
    # garbled ones it is far off.
    scale = batch_stats.abs().mean()
    assert (recomputed - batch_stats).abs().mean() < 0.05 * scale
    assert (stale - batch_stats).abs().mean() > 0.5 * scale


def test_a_g_without_running_statistics_and_ema_bn_copy_are_sampled_as_stored(cgan_run):
    from gan_dist import checkpoint as ckpt
    from gan_dist.config import ModelConfig
    from gan_dist.inference import load_generator
    from gan_dist.models import DataShape, build_models
    from gan_dist.trainer.ema import sampling_generator, with_own_bn_stats

    mlp, _ = build_models(ModelConfig(arch="mlp", z_dim=2), DataShape("points", (2,)))
    assert with_own_bn_stats(mlp, 2) is mlp
    # A checkpoint's G_ema is sampled with statistics of its own (the default, recompute)...
    gen = load_generator(str(cgan_run))
    stored = ckpt.load_shared(ckpt.resolve_checkpoint(str(cgan_run)), need=("G_ema",))["G_ema"]
    means = [k for k in stored if k.endswith("running_mean")]
    assert means and all(not torch.equal(gen.G_ema.state_dict()[k], stored[k]) for k in means)
    # ... or, under schedule.ema_bn copy, with the ones training kept in it (G's).
    gen.cfg.schedule.ema_bn = "copy"
    assert sampling_generator(gen.G_ema, gen.cfg, "conditional", 10) is gen.G_ema
    gen.cfg.schedule.ema_bn = "recompute"
    assert sampling_generator(gen.G_ema, gen.cfg, "super_resolution", 0) is gen.G_ema
