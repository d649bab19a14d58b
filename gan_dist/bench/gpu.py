"""gan-dist's DCGAN-64 recipe against a plain PyTorch DCGAN on one GPU, side by side.

The baseline is written here in the style of the classic pytorch/examples
dcgan (`main.py`): fp32, no tricks. G is transposed convolutions with
BatchNorm and ReLU, D strided convolutions with BatchNorm and LeakyReLU ending
in a sigmoid; BCE; Adam 2e-4 (0.5, 0.999); nz 100, ngf = ndf = 64 (the
recipe's z_dim and channels, so overrides apply to both); one D update on a
real and a fake batch, then one G update reusing that fake; the per-step loss
and D(x) reads of the example (`.item()`). A second baseline drops those reads.
The baselines get their batches from a tensor already on the GPU, which
favours them. cuDNN autotuning is on for all (the example turns it on).

gan-dist runs the recipe as configured through its own trainer in this process:
the real Worker and loop (`train_steps`: `train_step`, the interval hooks, the
data from its rank stream and loader processes). No Ray is imported.

The runs take turns in segments of one log interval (the GPU synchronised at
each end), the order rotating every round; each ratio is the median over
rounds of the per-round ratio, in images (real, consumed) per second of wall
time.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from gan_dist.bench.classic import ClassicLoop
from gan_dist.bench.overhead import bench_config, build_worker, free_port, memory_batches, rounds
from gan_dist.trainer.loop import train_steps


def gpu_bench(overrides: list[str], device: torch.device, root: Path, rounds_: int = 5, segment: int = 0) -> dict:
    """Images per second of the dcgan-64 recipe through gan-dist and of the classic loop;
    `segment` steps per turn (0: the recipe's log interval)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.backends.cudnn.benchmark = True
    log = [f"train.log_every={segment}"] if segment else []
    w = build_worker(bench_config("dcgan-64", *overrides, *log, f"metrics.port={free_port()}"), root)
    if w.rt.device.type != device.type:
        raise RuntimeError(f"the trainer chose {w.rt.device}, the bench was asked for {device}")
    if w.shape.sample_shape[1:] != (64, 64):
        raise ValueError(f"the classic DCGAN baseline makes 64x64 images, the data holds "
                         f"{'x'.join(map(str, w.shape.sample_shape[1:]))}")
    steps, batch = w.cfg.train.log_every, w.plan.batch_per_rank
    held = [b.to(device) for b in memory_batches(w, 4)]
    classic = ClassicLoop(w.cfg.model.z_dim, w.cfg.model.channels, device, reads=True, batches=held)
    no_reads = ClassicLoop(w.cfg.model.z_dim, w.cfg.model.channels, device, reads=False, batches=held)

    def segment_of(step):
        def run() -> None:
            for _ in range(steps):
                step()
            sync()
        return run

    def gan_dist() -> None:
        train_steps(w, w.st.step + steps)
        sync()

    runs = {"gan_dist": gan_dist, "classic": segment_of(classic.step), "classic_no_reads": segment_of(no_reads.step)}
    rounds(runs, 1)  # warm-up: cuDNN autotuning, allocator, loader processes, compilation if asked
    t = rounds(runs, rounds_)
    w.stream.close()
    images = steps * batch * w.cfg.schedule.n_critic
    rate = {name: images / statistics.median(times.wall) for name, times in t.items()}
    speedup = statistics.median(c / g for g, c in zip(t["gan_dist"].wall, t["classic"].wall))
    return {
        "gpu_speedup": speedup,
        "images_per_second": rate["gan_dist"],
        "images_per_second_per_gpu": rate["gan_dist"] / 1,
        "baseline_images_per_second": rate["classic"],
        "baseline_no_reads_images_per_second": rate["classic_no_reads"],
        "speedup_over_no_reads": statistics.median(c / g for g, c in zip(t["gan_dist"].wall,
                                                                         t["classic_no_reads"].wall)),
        "recipe": "dcgan-64", "overrides": overrides, "batch": batch, "steps_per_segment": steps,
        "rounds": rounds_, "mixed_precision": w.rt.accelerator.mixed_precision,
        "compile": w.cfg.perf.compile, "device": str(device),
    }
