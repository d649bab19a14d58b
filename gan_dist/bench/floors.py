"""The floors of the Inception metrics on Fashion-MNIST: what a perfect generator scores (the
test split against the training split), and a few corruptions of it, so that a model's
number can be placed.

    python -m gan_dist.bench.floors [--n 10000] [--corrupt-n 2000] [--out FILE.json]

At n (10,000, as the published numbers): FID, KID and precision/recall of the test split's
first n images against the training split's first n (each the first n of one seeded pass).
At corrupt-n, against the training split's first corrupt-n: the clean test images, and the
same images with Gaussian noise (std 0.1 and 0.3 of the [-1, 1] range), blurred (Gaussian,
sigma 1 pixel), and one class only (the test images of class 0, repeated to corrupt-n: a
generator collapsed onto one class). FID is biased upwards at small n, so corruptions are
compared with the clean row at the same n.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan_dist.bench import description
from gan_dist.data.sources import resolve_source
from gan_dist.evaluate import read_real
from gan_dist.quality.features import Ranks, real_features
from gan_dist.quality.inception import embed
from gan_dist.quality.metrics import scores, unlabelled

TRAIN, TEST = "builtin:fashion-mnist", "builtin:fashion-mnist-test"


def blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    t = torch.from_numpy(images)
    c = t.shape[1]
    t = F.conv2d(F.pad(t, (radius,) * 4, mode="replicate"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    t = F.conv2d(t, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return t.numpy()


def corruptions(images: np.ndarray, labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = images[:n]
    one_class = images[labels == 0]
    return {
        "clean": clean,
        "noise 0.1": np.clip(clean + rng.normal(0, 0.1, clean.shape).astype(np.float32), -1, 1),
        "noise 0.3": np.clip(clean + rng.normal(0, 0.3, clean.shape).astype(np.float32), -1, 1),
        "blur 1px": blur(clean),
        "one class": np.concatenate([one_class] * -(-n // len(one_class)))[:n],
    }


def run(n: int, corrupt_n: int) -> dict:
    t0 = time.time()
    train, test = resolve_source(TRAIN), resolve_source(TEST)
    real = real_features(train, n, Ranks())
    fake = real_features(test, n, Ranks())
    rows = [{"what": "test split", "n": n, **scores(real, fake, ("fid", "kid", "pr"))}]
    images, labels = read_real(test, n, seed=0)
    for name, corrupted in corruptions(images, labels, corrupt_n).items():
        if name == "clean":
            features = fake[:corrupt_n]  # the same images, already embedded
        elif name == "one class":
            unique = images[labels == 0]
            features = np.concatenate([embed(unique)] * -(-corrupt_n // len(unique)))[:corrupt_n]
        else:
            features = embed(corrupted)
        rows.append({"what": f"test split, {name}", "n": corrupt_n,
                     **scores(real[:corrupt_n], features, ("fid", "kid", "pr"))})
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "command": f"python -m {__spec__.name} --n {n} --corrupt-n {corrupt_n}",
            "seconds": time.time() - t0, "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(result: dict) -> str:
    lines = ["| against the training split | n | FID | KID | precision | recall |", "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        m = unlabelled(row, row["n"])
        lines.append(f"| {row['what']} | {row['n']:,} | {m['fid']:.2f} | {m['kid']:.4f} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--corrupt-n", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.n, args.corrupt_n)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
