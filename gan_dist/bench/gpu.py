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
from torch import nn

from gan_dist.bench.overhead import bench_config, build_worker, free_port, memory_batches, rounds
from gan_dist.trainer.loop import train_steps


def classic_generator(nz: int, ngf: int, nc: int) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def classic_discriminator(ndf: int, nc: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())


def weights_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ClassicLoop:
    """The classic example's training loop over batches held on the device."""

    def __init__(self, nz: int, width: int, batches: list[torch.Tensor], device: torch.device, reads: bool):
        self.netG = classic_generator(nz, width, batches[0].shape[1]).to(device)
        self.netD = classic_discriminator(width, batches[0].shape[1]).to(device)
        self.netG.apply(weights_init)
        self.netD.apply(weights_init)
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.criterion = nn.BCELoss()
        self.batches, self.nz, self.device, self.reads, self.i = batches, nz, device, reads, 0

    def step(self) -> None:
        real = self.batches[self.i % len(self.batches)]
        self.i += 1
        b = real.size(0)
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z))).
        self.netD.zero_grad()
        label = torch.full((b,), 1.0, device=self.device)
        output = self.netD(real).view(-1)
        errD_real = self.criterion(output, label)
        errD_real.backward()
        noise = torch.randn(b, self.nz, 1, 1, device=self.device)
        fake = self.netG(noise)
        label.fill_(0.0)
        output_fake = self.netD(fake.detach()).view(-1)
        errD_fake = self.criterion(output_fake, label)
        errD_fake.backward()
        self.optD.step()
        # (2) Update G: maximize log(D(G(z))).
        self.netG.zero_grad()
        label.fill_(1.0)
        output_g = self.netD(fake).view(-1)
        errG = self.criterion(output_g, label)
        errG.backward()
        self.optG.step()
        if self.reads:  # what the example prints every step: host syncs
            (errD_real + errD_fake).item(), errG.item(), output.mean().item()
            output_fake.mean().item(), output_g.mean().item()


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
    classic = ClassicLoop(w.cfg.model.z_dim, w.cfg.model.channels, held, device, reads=True)
    no_reads = ClassicLoop(w.cfg.model.z_dim, w.cfg.model.channels, held, device, reads=False)

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
