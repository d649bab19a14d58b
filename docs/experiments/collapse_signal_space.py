"""Does the `mode_collapse` probe judge images better on the eval classifier's features than on
pixels? (docs/benchmarks.md, "Detection suite", the Stacked run's warning.) Not part of the
package; run from the repository root with checkpoints (or run directories) as arguments:

    python docs/experiments/collapse_signal_space.py runs/a/step-006000 runs/b ... > signals.json

For each checkpoint, G (in training mode, as the live probe runs it) and G_ema draw 256 samples
on fixed noise; the probe's signals (diversity ratio, near-duplicate rate, their collapse score)
are computed twice against 256 real images of the run's data: on pixels, as the detector does,
and on the penultimate features of the eval's classifier of the data (for stacked data, each
channel's features under the classifier of the data set it comes from, concatenated). One
thread; about 5 s a checkpoint.
"""

from __future__ import annotations

import json
import sys

import torch

from gan_dist import checkpoint as ckpt
from gan_dist.data.sources import resolve_source
from gan_dist.evaluate import domain_classifier, read_real
from gan_dist.models import build_models, model_task
from gan_dist.monitor.signals import collapse_score, probe_signals
from gan_dist.plan import data_shape

SAMPLES = 256


def features(net, x: torch.Tensor, stacked: bool) -> torch.Tensor:
    if stacked:
        return torch.cat([net.features(x[:, c:c + 1]) for c in range(x.shape[1])], 1)
    return net.features(x)


def signals(fake: torch.Tensor, real: torch.Tensor) -> dict:
    found = {name: round(float(value), 4) for name, value in probe_signals(fake, real).items()}
    return {**found, "collapse_score": round(collapse_score(found), 4)}


@torch.no_grad()
def study(path: str) -> dict:
    folder = ckpt.resolve_checkpoint(path)
    cfg = ckpt.read_config(folder)
    state = ckpt.load_shared(folder, need=("G_ema", "step"))
    meta = state["data_meta"]
    index = resolve_source(cfg.data.source, cfg.data.cache_dir)
    stacked = meta.get("stacked")
    base = resolve_source(f"builtin:{stacked['base']}", cfg.data.cache_dir) if stacked else index
    net, _ = domain_classifier(base, "cpu")
    real = torch.from_numpy(read_real(index, SAMPLES, seed=7)[0]).float()
    z = torch.randn(SAMPLES, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    inputs = (z, torch.arange(SAMPLES) % meta["num_classes"]) if model_task(cfg.model.arch) == "conditional" else (z,)
    out = {"checkpoint": str(folder), "recipe": cfg.recipe, "data": cfg.data.source, "step": state["step"]}
    for key in ("G", "G_ema"):
        if key not in state:
            continue
        G, _ = build_models(cfg.model, data_shape(meta, cfg.model))
        G.load_state_dict(state[key])
        fake = G.train(key == "G")(*inputs).float().clamp(-1, 1)
        out[key] = {"pixels": signals(fake, real),
                    "features": signals(features(net, fake, bool(stacked)), features(net, real, bool(stacked)))}
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps([study(path) for path in sys.argv[1:]], indent=1))
