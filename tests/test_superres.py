"""Super-resolution: Y-channel PSNR/SSIM on whole photos, tiled upscaling, the two-phase
schedule (SRResNet, then SRGAN) with exact resume, and `gan-dist sample --input`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gan_dist import checkpoint as ckpt
from gan_dist import superres
from gan_dist.bench import superres as bench_superres
from gan_dist.cli import main
from gan_dist.config import ConfigError, resolve
from gan_dist.data.errors import DataError
from gan_dist.data.photos import ImageTooLarge
from gan_dist.data.pack import PackOptions, pack
from gan_dist.inference import read_input_image
from gan_dist.models.srgan import SRResNet
from gan_dist.schedule import build_schedule

pytestmark = pytest.mark.unit


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random "photo" (blurred noise: bicubic upscaling does well on it, not perfectly)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-1, 1, size=(1, 3, height // 4 + 1, width // 4 + 1)).astype(np.float32))
    fine = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    fine = fine + 0.1 * torch.from_numpy(rng.standard_normal((1, 3, height, width)).astype(np.float32))
    return superres.to_pixels(fine.clamp(-1, 1))


def write_photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"photo{i}.png"
        Image.fromarray(photo(width, height, seed=i)).save(path)
        paths.append(path)
    return paths


class Bicubic(nn.Module):
    """A "G" that is bicubic upsampling: its scores must equal bicubic's."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, lr):
        return superres.bicubic(lr, self.scale)


# Metrics ------------------------------------------------------------------------------

def test_luma_is_bt601_studio_range():
    rgb = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    y = superres.luma(rgb[:, :, None, None])[:, 0, 0, 0] * 255
    assert y.tolist() == pytest.approx([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    grey = torch.rand(2, 1, 5, 5)
    assert torch.equal(superres.luma(grey), grey)


def test_y_scores_shave_the_border_and_see_inside_it():
    hr = torch.rand(1, 3, 32, 32) * 2 - 1
    sr = hr.clone()
    sr[..., :4, :] = -1  # wrong only in a 4-pixel band at the top
    p_shaved, s_shaved = superres.y_scores(sr, hr, border=4)
    p_full, s_full = superres.y_scores(sr, hr, border=0)
    assert p_shaved.item() == pytest.approx(120.0) and s_shaved.item() == pytest.approx(1.0)
    assert p_full.item() < 40 and s_full.item() < 1
    # PSNR by hand on Y in [0, 1]: 10 log10(1 / mse)
    noisy = (hr + 0.1 * torch.randn_like(hr)).clamp(-1, 1)
    q = lambda t: ((t.double() + 1) * 127.5).round() / 255  # noqa: E731
    mse = ((superres.luma(q(noisy)) - superres.luma(q(hr)))[..., 2:-2, 2:-2] ** 2).mean()
    assert superres.y_scores(noisy, hr, 2)[0].item() == pytest.approx(float(10 * torch.log10(1 / mse)))


def small_g(blocks: int = 2, scale: int = 4) -> SRResNet:
    torch.manual_seed(0)
    G = SRResNet(3, 8, blocks, scale).eval()
    for m in G.modules():  # BatchNorm with non-trivial running statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    return G


def test_tiled_upscaling_equals_the_whole_image():
    G = small_g()
    lr = torch.rand(1, 3, 37, 29) * 2 - 1  # sides that tiles of 16 do not divide
    whole = superres.upscale(G, lr, 4)
    tiled = superres.upscale(G, lr, 4, tile=16)
    assert tiled.shape == whole.shape == (1, 3, 148, 116)
    assert (tiled - whole).abs().max().item() < 1e-5
    # without context at the seams the tiles differ: the test can fail
    assert (superres.upscale(G, lr, 4, tile=16, overlap=0) - whole).abs().max().item() > 1e-3


def test_the_bicubic_skip_starts_g_at_bicubic_and_tiles_like_the_whole_image(tmp_path):
    torch.manual_seed(0)
    G = SRResNet(3, 8, 2, 4, bicubic_skip=True).eval()
    plain = SRResNet(3, 8, 2, 4).eval()
    lr = torch.rand(1, 3, 37, 29) * 2 - 1
    residual = superres.upscale(G, lr, 4) - superres.bicubic(lr, 4)
    assert residual.abs().mean().item() < 0.05  # near bicubic, untrained
    assert (superres.upscale(plain, lr, 4) - superres.bicubic(lr, 4)).abs().mean().item() > 0.1
    assert (superres.upscale(G, lr, 4, tile=16) - superres.upscale(G, lr, 4)).abs().max().item() < 1e-5
    paths = write_photos(tmp_path / "p", [(64, 64)])
    scored = superres.evaluate_photos(G, paths, 4, 3)
    assert scored["psnr_y"] > scored["psnr_y_bicubic"] - 1.5


def test_photos_are_scored_whole_with_bicubic_beside(tmp_path):
    paths = write_photos(tmp_path / "p", [(70, 53), (64, 64)])  # 70x53 is cut to 68x52 for x4
    result = superres.evaluate_photos(Bicubic(4), paths, 4, 3, tile=8)
    assert result["sr_photos"] == 2 and set(result["per_photo"]) == {"photo0.png", "photo1.png"}
    assert result["psnr_y"] == pytest.approx(result["psnr_y_bicubic"], abs=1e-3)  # tiled, or whole
    assert result["ssim_y"] == pytest.approx(result["ssim_y_bicubic"], abs=1e-5)
    assert 15 < result["psnr_y_bicubic"] < 60 and 0 < result["ssim_y_bicubic"] < 1
    # a worse G scores worse: a flat grey output
    flat = superres.evaluate_photos(lambda lr: torch.zeros(*lr.shape[:2], lr.shape[2] * 4, lr.shape[3] * 4),
                                    paths, 4, 3)
    assert flat["psnr_y"] < result["psnr_y"] - 3


def test_fid_crops_tile_the_image_without_overlap():
    x = torch.arange(2 * 200 * 300, dtype=torch.float32).reshape(1, 2, 200, 300)
    crops = superres.fid_crops(x, 96)
    assert crops.shape == (2 * 3, 2, 96, 96)
    assert torch.equal(crops[4], x[0, :, 96:192, 96:192])


@pytest.mark.slow
def test_crop_inception_metrics_of_sr_and_of_bicubic_against_hr(tmp_path):
    paths = write_photos(tmp_path / "p", [(192, 96)] * 3)  # 2 crops of 96 each
    result = superres.evaluate_photos(Bicubic(4), paths, 4, 3, inception=True)
    # G is bicubic here: the same crops, the same features; blurred crops are not the HR ones
    assert result["crop_n"] == 6 and result["crop_fid"] == result["crop_fid_bicubic"]
    assert result["crop_fid"] > 0 and 0 <= result["crop_precision"] <= 1 and 0 <= result["crop_recall"] <= 1


def test_sr_photos_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        superres.photo_paths(str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="a folder without images"):
        superres.photo_paths(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="the builtin photographs are builtin:photos, builtin:photos-eval"):
        superres.photo_paths("builtin:digits")


# The two phases ------------------------------------------------------------------------

def test_the_srresnet_phase_runs_g_alone_then_the_adversarial_phases():
    cfg = resolve("srgan-photos", ["schedule.srresnet_steps=3"])
    schedule = build_schedule(cfg.schedule, cfg.loss)
    assert [[p.name for p in schedule.phases_at(s)] for s in range(5)] == [
        ["Gcontent"], ["Gcontent"], ["Gcontent"], ["Dmain", "Gmain"], ["Dmain", "Gmain"]]
    with pytest.raises(ConfigError, match="schedule.srresnet_steps needs a super-resolution model"):
        resolve("ring8", ["schedule.srresnet_steps=10"])


@pytest.fixture(scope="module")
def hr_crops(tmp_path_factory) -> tuple[Path, Path]:
    """Packed 16x16 crops of small photos, and a folder of two held-out photos."""
    root = tmp_path_factory.mktemp("sr")
    write_photos(root / "train", [(64, 48), (48, 64), (56, 56)])
    pack(str(root / "train"), root / "crops", PackOptions(crop=16, crops_per_image=16))
    write_photos(root / "held-out", [(40, 32), (36, 36)])
    return root / "crops", root / "held-out"


def sr_train(storage: Path, name: str, steps: int, data: Path, photos: Path, inception: bool = False) -> dict:
    argv = ["train", "srgan-photos", "--no-ray", "--storage", str(storage), "--name", name,
            "--max-steps", str(steps)]
    for setting in (f"data.source={data}", "data.batch_size=4", "model.channels=8", "model.sr_blocks=1",
                    "schedule.srresnet_steps=4", "schedule.ema_halflife_steps=2", "train.log_every=1",
                    "train.sample_every=1000", "checkpoint.every=3", "checkpoint.keep=5", f"eval.sr_photos={photos}",
                    f"eval.inception={str(inception).lower()}", "metrics.port=0"):
        argv += ["--set", setting]
    assert main(argv) == 0
    return json.loads((storage / name / "summary.json").read_text())


@pytest.fixture(scope="module")
def straight(hr_crops, tmp_path_factory) -> tuple[Path, dict]:
    storage = tmp_path_factory.mktemp("runs")
    return storage, sr_train(storage, "straight", 7, *hr_crops)


def test_two_phases_in_one_run_and_the_eval_on_held_out_photos(straight):
    storage, summary = straight
    # The SRResNet phase's end is saved (checkpoint.every is 3) and kept: D and its optimizer
    # never touched
    assert [f.name for f in ckpt.step_dirs(storage / "straight")] == [f"step-{s:06d}" for s in (7, 6, 4, 3)]
    srresnet = ckpt.load_shared(storage / "straight" / "step-000004")
    assert srresnet["opt_D"]["state"] == {} and srresnet["opt_G"]["state"] != {}
    manifest = json.loads((storage / "straight" / "step-000004" / "manifest-00000.json").read_text())
    assert manifest["metrics"]["phase_end"] == 1
    end = ckpt.load_shared(storage / "straight" / "step-000007")
    assert end["opt_D"]["state"] != {}
    rows = {row["step"]: row for row in end["history"]}
    assert "loss_d" not in rows[4] and "content_loss" in rows[4]  # the row after step index 3: SRResNet
    assert "loss_d" in rows[5] and "content_loss" in rows[5]
    ev = summary["eval"]
    assert set(ev["per_photo"]) == {"photo0.png", "photo1.png"} and ev["sr_photos"] == 2
    assert all(k in ev for k in ("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic"))


def test_the_end_of_run_inception_eval_of_super_resolution_is_the_crop_fid(hr_crops, tmp_path):
    """eval.inception on an SR recipe (srgan-photos ships with it on): the end of the run scores
    the eval photos' crops, not G's images from noise against the training crops (there are
    fewer than eval.inception_n of those here, as there are in builtin:photos)."""
    data, _ = hr_crops
    photos = tmp_path / "photos"
    write_photos(photos, [(192, 192)])  # 4 crops of 96x96
    summary = sr_train(tmp_path / "runs", "crop-fid", 5, data, photos, inception=True)
    assert summary["status"] == "completed"
    ev = summary["eval"]
    assert ev["crop_n"] == 4 and np.isfinite(ev["crop_fid"]) and np.isfinite(ev["crop_fid_bicubic"])
    assert "fid10k" not in ev


def test_a_run_stopped_in_the_srresnet_phase_resumes_exactly_across_the_phase_change(straight, hr_crops):
    storage, reference = straight
    first = sr_train(storage, "resumed", 3, *hr_crops)
    assert first["steps"] == 3
    resumed = sr_train(storage, "resumed", 7, *hr_crops)
    assert resumed["steps"] == 7 and resumed["fingerprint"] == reference["fingerprint"]
    assert resumed["data"]["samples_seen"] == reference["data"]["samples_seen"]


def test_eval_of_a_checkpoint_scores_the_held_out_photos(straight, capsys):
    storage, summary = straight
    assert main(["eval", str(storage / "straight" / "step-000003")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 3 and result["sr_photos"] == 2 and result["psnr_y_bicubic"] == pytest.approx(
        summary["eval"]["psnr_y_bicubic"])


# gan-dist sample --input ---------------------------------------------------------------

def upscaled(storage: Path, image: Image.Image, tmp_path: Path, name: str) -> Image.Image:
    src = tmp_path / f"{name}.png"
    image.save(src)
    out = tmp_path / f"{name}-x4.png"
    assert main(["sample", str(storage / "straight"), "--input", str(src), "--out", str(out)]) == 0
    return Image.open(out)


def test_sample_input_upscales_rgb_grey_and_rgba(straight, tmp_path):
    storage, _ = straight
    rgb = Image.fromarray(photo(20, 12))
    out = upscaled(storage, rgb, tmp_path, "rgb")
    assert out.mode == "RGB" and out.size == (80, 48)
    out_grey = upscaled(storage, rgb.convert("L"), tmp_path, "grey")
    assert out_grey.mode == "L" and out_grey.size == (80, 48)
    rgba = rgb.copy()
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 20).astype(np.uint8), (12, 1)))
    rgba.putalpha(alpha)
    out_rgba = upscaled(storage, rgba, tmp_path, "rgba")
    assert out_rgba.mode == "RGBA" and out_rgba.size == (80, 48)
    assert np.array_equal(np.asarray(out_rgba.getchannel("A")),
                          np.asarray(alpha.resize((80, 48), Image.Resampling.BICUBIC)))
    # the colour is G's, whatever the alpha
    assert np.array_equal(np.asarray(out_rgba.convert("RGB")), np.asarray(out))


def test_sample_input_that_is_not_an_image_is_one_line_exit_2(straight, tmp_path, capsys):
    storage, _ = straight
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    out = tmp_path / "x.png"
    assert main(["sample", str(storage / "straight"), "--input", str(tmp_path / "notes.jpg"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.jpg: not a readable image" in err[0] and not out.exists()


def test_sample_input_is_checked_before_it_is_decoded(tmp_path):
    Image.fromarray(photo(20, 12)).save(tmp_path / "p.png")
    assert read_input_image(str(tmp_path / "p.png")).size == (20, 12)
    with pytest.raises(ImageTooLarge, match=r"--input .*p.png: 20x12 is 240 pixels, over the limit of 100 \(a "
                                            r"decompression bomb\?\)$"):
        read_input_image(str(tmp_path / "p.png"), max_pixels=100)
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        read_input_image(str(tmp_path))
    with pytest.raises(ValueError, match="no such file"):
        read_input_image(str(tmp_path / "none.png"))


def test_the_benchmark_scores_both_phases_against_the_goals(straight, hr_crops, tmp_path, capsys):
    storage, summary = straight
    run = storage / "straight"
    assert bench_superres.main([str(run), "--srresnet", str(run / "step-000003"), "--out", str(tmp_path),
                                "--no-inception"]) == 0
    result = json.loads((tmp_path / "superres.json").read_text())
    assert (result["srresnet"]["step"], result["srgan"]["step"]) == (3, 7)
    assert result["srgan"]["psnr_y"] == pytest.approx(summary["eval"]["psnr_y"])
    gain = result["srresnet"]["psnr_y"] - result["srresnet"]["psnr_y_bicubic"]
    assert result["goals"]["srresnet_psnr_y_gain_ge_1dB"] == (gain >= 1.0)
    assert "goals: srresnet_psnr_y_gain_ge_1dB" in capsys.readouterr().out
    # LR | bicubic | SRResNet | SRGAN | HR of the first photo (36x40 -> a 32x32 crop), 4-pixel gaps
    crops = np.asarray(Image.open(tmp_path / "superres-crops.png"))
    assert crops.shape == (32, 5 * 32 + 4 * 4, 3)
    hr = np.asarray(Image.open(hr_crops[1] / "photo0.png"))
    assert np.array_equal(crops[:, 4 * 36:], hr[0:32, 4:36])  # the HR panel: the photo's centre
    # By default the SRResNet phase is its end's checkpoint; without one, the benchmark says what to do
    assert bench_superres.main([str(run), "--out", str(tmp_path), "--no-inception"]) == 0
    assert json.loads((tmp_path / "superres.json").read_text())["srresnet"]["step"] == 4
    pruned = tmp_path / "pruned"
    shutil.copytree(run, pruned, ignore=shutil.ignore_patterns("step-000004"))
    with pytest.raises(ValueError, match="no checkpoint at the end of the SRResNet phase .step 4.; name one"):
        bench_superres.main([str(pruned), "--out", str(tmp_path)])


@pytest.mark.unit
def test_the_progress_line_of_the_srresnet_phase_names_no_d_step(capsys):
    from gan_dist.driver import ProgressDisplay
    from gan_dist.results import HubSnapshot

    rows = [{"step": 100, "loss_g": 0.118, "content_loss": 0.118, "samples_per_second": 73.0},
            {"step": 4100, "loss_g": 0.05, "loss_d": 1.3, "d_acc_real": 0.6, "d_acc_fake": 0.55,
             "samples_per_second": 40.0}]
    snapshot = lambda since: HubSnapshot(1, 2, 0, rows[since:], len(rows), 5000, None, [], [], None)  # noqa: E731
    display = ProgressDisplay(snapshot, 5000, interactive=False)
    display.poll()
    srresnet, srgan = capsys.readouterr().out.splitlines()
    assert srresnet == "step 100/5000  loss G 0.1180 (no D step)  73 samples/s"
    assert srgan == "step 4100/5000  loss D 1.3000 G 0.0500  D acc real 0.60 fake 0.55  40 samples/s"
