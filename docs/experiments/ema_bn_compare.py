"""Score a checkpoint's G_ema with G's BatchNorm statistics (as stored: schedule.ema_bn copy) and
with statistics of its own (recompute, the default), on the same noise:

    python docs/experiments/ema_bn_compare.py CHECKPOINT [--n 2000] [--modes recompute,copy]
                                              [--noise eval|end-of-run]

One JSON line per mode: the Inception metrics of N samples against the data's first N images,
the noise drawn as `gan-dist eval` draws it (seed + 1) or as a run's end-of-run eval (seed + 3)
(docs/benchmarks.md, "G_ema's own BatchNorm statistics").
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from gan_dist import checkpoint as ckpt
from gan_dist.data.sources import resolve_source
from gan_dist.inference import load_generator
from gan_dist.quality.metrics import inception_metrics

NOISE = {"eval": 1, "end-of-run": 3}  # seed offsets: gan_dist.quality.cli, gan_dist.trainer.worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--modes", default="recompute,copy")
    parser.add_argument("--noise", choices=sorted(NOISE), default="eval")
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen = load_generator(args.checkpoint)  # G_ema with statistics of its own
    stored = copy.deepcopy(gen.G_ema)
    stored.load_state_dict(ckpt.load_shared(ckpt.resolve_checkpoint(args.checkpoint), need=("G_ema",))["G_ema"])
    classes = gen.meta["num_classes"] if gen.task == "conditional" else 0
    index = resolve_source(gen.cfg.data.source, gen.cfg.data.cache_dir)
    for mode, G in (("recompute", gen.G_ema), ("copy", stored)):
        if mode in args.modes.split(","):
            result = inception_metrics(G, gen.cfg.model.z_dim, classes, index, args.n,
                                       seed=gen.cfg.seed + NOISE[args.noise])
            print(json.dumps({"checkpoint": args.checkpoint, "ema_bn": mode, "step": gen.step, **result}), flush=True)


if __name__ == "__main__":
    main()
