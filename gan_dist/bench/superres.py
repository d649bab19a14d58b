"""The super-resolution benchmark of docs/benchmarks.md: both phases of an SRGAN run scored on
its eval photos, against the issue's goals, with a side-by-side crop.

    python -m gan_dist.bench.superres RUN [--srresnet CKPT] [--out DIR] [--no-inception]

RUN is a run (or its final checkpoint) of a recipe with `schedule.srresnet_steps`, such as
`srgan-photos`. The SRResNet phase is scored on its checkpoint at that step (or --srresnet),
the SRGAN phase on the run's latest checkpoint; both on the whole photos of the run's
`eval.sr_photos`: Y-channel PSNR/SSIM with bicubic beside and, unless --no-inception, the
crop FID and precision/recall. Writes DIR/superres.json (the scores, the goals met or not,
the machine) and DIR/superres-crops.png: one 96x96 crop of the first photo as LR (enlarged
with nearest neighbours) | bicubic | SRResNet | SRGAN | HR.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from gan_dist import checkpoint as ckpt
from gan_dist import superres
from gan_dist.bench import description
from gan_dist.data import photos
from gan_dist.inference import Generator, load_generator
from gan_dist.models.srgan import downsample

CROP = superres.FID_CROP


def phase_checkpoints(run: str, srresnet: str | None) -> tuple[Path, Path]:
    """The SRResNet phase's checkpoint and the run's latest one."""
    final = ckpt.resolve_checkpoint(run)
    if srresnet:
        return ckpt.resolve_checkpoint(srresnet), final
    steps = ckpt.read_config(final).schedule.srresnet_steps
    if not steps:
        raise ValueError(f"{run}: schedule.srresnet_steps is 0, so the run has no SRResNet phase; "
                         f"name its checkpoint with --srresnet")
    folder = final.parent / ckpt.step_dir_name(steps)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no checkpoint at the end of the SRResNet phase (step {steps}); "
                         f"name one with --srresnet")
    return folder, final


def score(gen: Generator, paths: list[Path], inception: bool) -> dict:
    cfg = gen.cfg
    t0 = time.perf_counter()
    result = superres.evaluate_photos(gen.G_ema, paths, cfg.model.sr_scale, gen.meta["sample_shape"][0],
                                      cfg.eval.sr_tile, inception=inception)
    return {"step": gen.step, **result, "seconds": time.perf_counter() - t0}


def goals(srresnet: dict, srgan: dict) -> dict:
    """The issue's goals: which hold (FID goals only when the crop FIDs were computed)."""
    out = {"srresnet_psnr_y_gain_ge_1dB": srresnet["psnr_y"] - srresnet["psnr_y_bicubic"] >= 1.0,
           "srgan_psnr_y_ge_bicubic": srgan["psnr_y"] >= srgan["psnr_y_bicubic"]}
    if "crop_fid" in srgan and "crop_fid" in srresnet:
        out["srgan_crop_fid_below_srresnet"] = srgan["crop_fid"] < srresnet["crop_fid"]
        out["srgan_crop_fid_below_bicubic"] = srgan["crop_fid"] < srgan["crop_fid_bicubic"]
    return out


def side_by_side(srresnet: Generator, srgan: Generator, path: Path, gap: int = 4) -> Image.Image:
    """LR (nearest-neighbour enlarged) | bicubic | SRResNet | SRGAN | HR of the photo's central
    CROP x CROP patch (smaller for a smaller photo), each cut from the upscaled whole photo (so
    G sees the same context as in the eval)."""
    scale = srgan.cfg.model.sr_scale
    channels = srgan.meta["sample_shape"][0]
    hr = superres.to_tensor(superres.mod_crop(photos.load_rgb(path, channels), scale))
    lr = downsample(hr, scale)
    h, w = hr.shape[-2:]
    size = min(CROP, h, w) // scale * scale
    top, left = (h - size) // 2 // scale * scale, (w - size) // 2 // scale * scale
    window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
    lr_crop = lr[..., top // scale:(top + size) // scale, left // scale:(left + size) // scale]
    panels = [superres.to_pixels(lr_crop).repeat(scale, 0).repeat(scale, 1),
              superres.to_pixels(superres.bicubic(lr, scale)[window]),
              superres.to_pixels(superres.upscale(srresnet.G_ema, lr, scale, srresnet.cfg.eval.sr_tile)[window]),
              superres.to_pixels(superres.upscale(srgan.G_ema, lr, scale, srgan.cfg.eval.sr_tile)[window]),
              superres.to_pixels(hr[window])]
    canvas = np.full((size, len(panels) * (size + gap) - gap, panels[0].shape[2]), 255, dtype=np.uint8)
    for i, panel in enumerate(panels):
        canvas[:, i * (size + gap):i * (size + gap) + size] = panel
    return Image.fromarray(canvas.squeeze(2) if channels == 1 else canvas)


def run(run_dir: str, srresnet: str | None, out: Path, inception: bool) -> dict:
    first, last = phase_checkpoints(run_dir, srresnet)
    gens = {"srresnet": load_generator(str(first)), "srgan": load_generator(str(last))}
    spec = gens["srgan"].cfg.eval.sr_photos
    if not spec:
        raise ValueError(f"{run_dir}: its config has no eval.sr_photos to score the phases on")
    paths = superres.photo_paths(spec)
    scores = {name: score(gen, paths, inception) for name, gen in gens.items()}
    result = {"run": str(run_dir), "checkpoints": {"srresnet": str(first), "srgan": str(last)},
              "sr_photos": spec, **scores, "goals": goals(scores["srresnet"], scores["srgan"]),
              "machine": platform.node(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    side_by_side(gens["srresnet"], gens["srgan"], paths[0]).save(out / "superres-crops.png")
    (out / "superres.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("run", help="the run (or its final checkpoint)")
    parser.add_argument("--srresnet", help="the SRResNet phase's checkpoint (default: the run's at srresnet_steps)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for superres.json and the crop PNG")
    parser.add_argument("--no-inception", action="store_true", help="PSNR/SSIM only (no crop FID)")
    args = parser.parse_args(argv)
    result = run(args.run, args.srresnet, args.out, not args.no_inception)
    for name in ("srresnet", "srgan"):
        r = result[name]
        fid = f", crop FID {r['crop_fid']:.1f} (bicubic {r['crop_fid_bicubic']:.1f})" if "crop_fid" in r else ""
        print(f"{name} (step {r['step']}): PSNR-Y {r['psnr_y']:.2f} dB, SSIM-Y {r['ssim_y']:.4f}; bicubic "
              f"{r['psnr_y_bicubic']:.2f} dB, {r['ssim_y_bicubic']:.4f}{fid}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["goals"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
