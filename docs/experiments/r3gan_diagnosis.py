"""Why R3GAN's networks lose on Stacked Fashion-MNIST at CPU width (docs/benchmarks.md, R3GAN,
"How our R3GAN networks train"). Not part of the package; run from the repository root.

Two probes:

    # 1. Each G alone, as a regression: fit 256 fixed Stacked Fashion-MNIST triples from 256
    #    fixed z (mean squared error, Adam beta1 0, beta2 0.9, batch 64, 600 steps, one thread).
    python docs/experiments/r3gan_diagnosis.py fit r3gan 2e-4
    python docs/experiments/r3gan_diagnosis.py fit dcgan 2e-4

    # 2. The networks crossed, with r3gan-stacked-fashion's loss, penalties and schedules at
    #    gamma 1 (a model plug-in, model.arch module:function): DCGAN's G against R3GAN's D,
    #    and R3GAN's G against DCGAN's D. `mixes` writes the two recipes into FOLDER.
    python docs/experiments/r3gan_diagnosis.py mixes FOLDER
    PYTHONPATH=docs/experiments gan-dist train FOLDER/dcgan-g-r3gan-d.yaml --no-ray --max-steps 750 \\
        --set train.log_every=125
    PYTHONPATH=docs/experiments gan-dist train FOLDER/r3gan-g-dcgan-d.yaml --no-ray --max-steps 750 \\
        --set train.log_every=125
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from gan_dist.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_dist.models.r3gan import R3GANDiscriminator, R3GANGenerator

# r3gan-stacked-fashion's networks: width 32 at each of 4 stages, 1 block each, expansion 2,
# cardinality 8; dcgan-fashion's: 32 channels at the top, doubling down to the 4x4 base.
R3GAN_WIDTHS, DCGAN_CHANNELS, Z_DIM = (32, 32, 32, 32), 32, 64


def r3gan_g(channels: int) -> R3GANGenerator:
    return R3GANGenerator(Z_DIM, R3GAN_WIDTHS, 1, 2, 8, channels)


def dcgan_g(channels: int, size: int) -> DCGANGenerator:
    return DCGANGenerator(Z_DIM, DCGAN_CHANNELS, size, channels)


def dcgan_g_r3gan_d(cfg, shape):
    """A model plug-in: DCGAN's G, R3GAN's D."""
    channels, size, _ = shape.sample_shape
    return dcgan_g(channels, size), R3GANDiscriminator(R3GAN_WIDTHS, 1, 2, 8, channels)


def r3gan_g_dcgan_d(cfg, shape):
    """A model plug-in: R3GAN's G, DCGAN's D."""
    channels, size, _ = shape.sample_shape
    return r3gan_g(channels), DCGANDiscriminator(DCGAN_CHANNELS, size, channels)


def fit(which: str, lr: float, steps: int = 600) -> None:
    from gan_dist.data.sources import resolve_source
    from gan_dist.evaluate import read_real

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, _ = read_real(resolve_source("builtin:stacked-fashion-mnist"), 256, seed=1)
    x = torch.from_numpy(x).float()
    z = torch.randn(len(x), Z_DIM)
    G = r3gan_g(3) if which == "r3gan" else dcgan_g(3, 32)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.9))
    started = time.process_time()
    for step in range(1, steps + 1):
        i = torch.randint(0, len(x), (64,))
        loss = (G(z[i]) - x[i]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                mse = (G(z) - x).square().mean().item()
            print(f"{which} lr {lr:g} step {step}: MSE {mse:.4f}, "
                  f"{(time.process_time() - started) / step:.3f} CPU-s a step", flush=True)


def mixes(folder: Path) -> None:
    """r3gan-stacked-fashion at gamma 1 with each crossed pair as its model."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).parents[2] / "gan_dist/recipes/r3gan-stacked-fashion.yaml").read_text())
    recipe["loss"].update(r1_gamma=1.0, r2_gamma=1.0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, builder in (("dcgan-g-r3gan-d", "dcgan_g_r3gan_d"), ("r3gan-g-dcgan-d", "r3gan_g_dcgan_d")):
        recipe["model"] = {"arch": f"r3gan_diagnosis:{builder}", "z_dim": Z_DIM}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        print(folder / f"{name}.yaml")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fit"] and len(sys.argv) == 4 and sys.argv[2] in ("r3gan", "dcgan"):
        fit(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:2] == ["mixes"] and len(sys.argv) == 3:
        mixes(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
