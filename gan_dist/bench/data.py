"""Data-plane benchmark: decode-and-batch throughput of one loader worker.

    python -m gan_dist.bench.data [--batches 100] [--repeats 5] [--json OUT]

For 32x32 and 64x64 RGB images (builtin:shapes, builtin:shapes64; 8192 PNGs
each) and the 96x96 photo crops of builtin:photos (9216 PNGs) it measures, in images per second of float32 [-1, 1] NCHW batches of 64:
- ours: a RankStream reading the packed shards in this process (what one
  loader worker does; sha256 verification on, as by default), with the
  images stored as PNG (as packed) and as PPM (`data pack --encode ppm`);
- plain: the same PNG bytes as a folder of files, each opened with PIL,
  converted and normalised, then stacked (an ImageFolder-style loader);
- the rate a DCGAN-32 training step consumes images at batch 64: a plain
  torch DCGAN (transposed-conv G, strided-conv D, BatchNorm, Adam, one D and
  one G step per batch) written here, because the model zoo lacked one then;
- the rate gan-dist's own srgan-photos step (the SRGAN phase, batch 16) consumes
  the 96x96 crops.
Each figure is the best of `repeats` interleaved runs after a warm-up batch,
in images per CPU-second of one thread (see best_rates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gan_dist.bench import description
from gan_dist.data.pack import PackOptions, pack
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream, ShardReader

BATCH = 64


def best_rates(runs: dict, images: int, repeats: int) -> dict[str, float]:
    """Images per CPU-second of the fastest of `repeats` runs of each run().

    CPU time of this process, not wall time: on a shared machine other jobs
    take the cores away at random, which wall time would count against
    whichever loader was running. Everything measured here runs on one
    thread, so on an idle core CPU time and wall time agree."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():  # interleaved, so slow spells hit all alike
            t0 = time.process_time()
            run()
            times[name].append(time.process_time() - t0)
    return {name: images / min(t) for name, t in times.items()}


def ours(index, batches: int):
    """A run() of `batches` batches from a rank stream over `index`, already warm."""
    stream = RankStream(index, 0, 1, BATCH, seed=0, window=64)
    stream.next_batch()  # warm-up: opens the first shard

    def run() -> None:
        for _ in range(batches):  # each batch dropped, as a training step would
            stream.next_batch()
    return run


def write_png_folder(index, folder: Path) -> list[Path]:
    """The dataset's PNG bytes as one file per image (the plain loader's input)."""
    reader = ShardReader(index, verify=False)
    order = np.arange(len(index.shards))
    bounds = np.cumsum([0] + [s.num_records for s in index.shards])
    folder.mkdir(parents=True)
    paths = []
    for record in reader.read(order, bounds, 0, index.num_records):
        path = folder / f"{record['__key__']}.png"
        path.write_bytes(record["png"])
        paths.append(path)
    reader.close()
    return paths


def plain_batches(paths: list[Path], batches: int) -> None:
    for b in range(batches):
        chunk = paths[(b * BATCH) % len(paths):][:BATCH]
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1 for p in chunk]
        np.stack([a.transpose(2, 0, 1) for a in arrays])


def dcgan32_rate(steps: int, repeats: int) -> float:
    """Images per second consumed by a DCGAN-32 step (one D and one G update) at
    batch 64, on one thread (a trainer's default: perf.torch_threads=1)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    G = nn.Sequential(
        nn.ConvTranspose2d(100, 256, 4, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(True),
        nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(True),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
        nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh())
    D = nn.Sequential(
        nn.Conv2d(3, 64, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, True),
        nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2, True),
        nn.Conv2d(256, 1, 4, 1, 0, bias=False), nn.Flatten())
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real = torch.rand(BATCH, 3, 32, 32) * 2 - 1
    ones, zeros = torch.ones(BATCH, 1), torch.zeros(BATCH, 1)

    def step() -> None:
        fake = G(torch.randn(BATCH, 100, 1, 1))
        loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(D(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    step()
    return best_rates({"dcgan": lambda: [step() for _ in range(steps)]}, steps * BATCH, repeats)["dcgan"]


def srgan96_rate(steps: int, repeats: int) -> tuple[float, int]:
    """HR images per CPU-second consumed by gan-dist's own step of `srgan-photos` in its SRGAN
    phase (one D update, one G update on content + adversarial loss) on one thread, the
    batch held in memory (bench.overhead.step_rate); and the recipe's batch."""
    from gan_dist.bench import overhead  # torch and the trainer: imported when timed

    with tempfile.TemporaryDirectory() as tmp:
        cfg = overhead.bench_config("srgan-photos", "schedule.srresnet_steps=0", "metrics.enabled=false")
        return overhead.step_rate(cfg, steps, repeats, Path(tmp)), cfg.data.batch_size


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--batches", type=int, default=100, help="batches of 64 per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported")
    parser.add_argument("--dcgan-steps", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "batch": BATCH, "sizes": {}}
    for name, size in (("shapes", 32), ("shapes64", 64), ("photos", 96)):
        index = resolve_source(f"builtin:{name}")
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_png_folder(index, Path(tmp) / "png")
            ppm = pack(f"builtin:{name}", Path(tmp) / "ppm", PackOptions(encode="ppm", shard_samples=1024))
            rates = best_rates({"plain": lambda: plain_batches(paths, args.batches),
                                "png": ours(index, args.batches), "ppm": ours(ppm, args.batches)},
                               args.batches * BATCH, args.repeats)
        plain = rates.pop("plain")
        row = {"plain_pil_png_folder": plain, **{f"ours_{k}": v for k, v in rates.items()},
               **{f"speedup_{k}": v / plain for k, v in rates.items()}}
        result["sizes"][f"{size}x{size}"] = row
        print(f"{size}x{size}: plain PIL PNG folder {plain:,.0f} img/s; ours PNG shards {rates['png']:,.0f} "
              f"(x{rates['png'] / plain:.2f}), PPM shards {rates['ppm']:,.0f} (x{rates['ppm'] / plain:.2f})",
              flush=True)
    dcgan = dcgan32_rate(args.dcgan_steps, args.repeats)
    at32 = result["sizes"]["32x32"]
    result.update(dcgan32_step=dcgan, png32_over_dcgan32=at32["ours_png"] / dcgan,
                  ppm32_over_dcgan32=at32["ours_ppm"] / dcgan)
    print(f"DCGAN-32 step (batch {BATCH}) consumes {dcgan:,.0f} img/s; one loader worker at 32x32 delivers "
          f"x{result['png32_over_dcgan32']:.0f} (PNG) and x{result['ppm32_over_dcgan32']:.0f} (PPM) that")
    srgan, sr_batch = srgan96_rate(args.dcgan_steps, args.repeats)
    at96 = result["sizes"]["96x96"]
    result.update(srgan96_step=srgan, png96_over_srgan96=at96["ours_png"] / srgan)
    print(f"srgan-photos step (batch {sr_batch}) consumes {srgan:,.0f} img/s; one loader worker on the 96x96 "
          f"photo crops delivers x{result['png96_over_srgan96']:.0f} that")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
