"""Every image family on Fashion-MNIST, scored by Inception FID on 10,000 samples, beside
the published anchor and the classic DCGAN loop trained for the same wall-clock time.

    python -m gan_dist.bench.families [--recipes NAME,...] [--seeds NAME=0,1 ...] [--no-classic]
                                      [--classic-seeds 0,1] [--set KEY=VALUE]... [--out DIR]

Each recipe runs as `gan-dist train RECIPE` would (its own workers, a local Ray), its
end-of-run eval with `eval.inception` (FID, KID, precision and recall of 10,000 G_ema samples
against the first 10,000 training images). The classic loop (bench.classic: the
pytorch/examples DCGAN, with dcgan-fashion's z and width) then trains in this process, on
all the training images held in memory, for the wall time dcgan-fashion (seed 0) spent
training (its periodic evals left out), once per seed of --classic-seeds, and is scored the
same way; the ratio of the mean FIDs (dcgan-fashion's over the classic loop's, the goal at
most 0.8) is printed and kept. Everything goes to DIR: the runs, a log per run, the sample
grids (grids/), FID-against-steps curves (fid-curves.png) and families.json; the table is
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from gan_dist.api import load_config, load_generator, train
from gan_dist.bench import description
from gan_dist.bench.classic import ClassicGenerator, ClassicLoop
from gan_dist.data.sources import resolve_source
from gan_dist.evaluate import classification_accuracy_score, read_real
from gan_dist.quality.features import generate_block
from gan_dist.quality.metrics import inception_metrics, unlabelled
from gan_dist.visualize import image_grid_png

RECIPES = ("vanilla-fashion", "dcgan-fashion", "wgangp-fashion", "hinge-fashion", "cgan-fashion")
SEEDS = {"dcgan-fashion": (0, 1), "cgan-fashion": (0, 1)}
BASELINE = "dcgan-fashion"  # the recipe whose training time the classic loop gets
CLASSIC = "classic pytorch/examples DCGAN"
GOAL_RATIO = 0.8  # the goal: BASELINE's FID at most this times the classic loop's
N = 10_000
# Lucic et al. 2018, "Are GANs Created Equal? A Large-Scale Study" (NeurIPS), Table 2: the best
# FID each GAN reached on Fashion-MNIST over a large hyper-parameter search (10,000 samples),
# mean and std over runs of its best setting.
LUCIC_FASHION = {"MM GAN": (29.6, 1.6), "NS GAN": (26.5, 1.6), "LSGAN": (30.7, 2.2), "WGAN": (21.5, 1.6),
                 "WGAN GP": (24.5, 2.1), "DRAGAN": (27.7, 1.2), "BEGAN": (22.9, 0.9)}
BEST_GAN = min(mean for mean, _ in LUCIC_FASHION.values())


def run_recipe(recipe: str, seed: int, out: Path, overrides: list[str], n: int = N) -> dict:
    name = f"{recipe}-s{seed}"
    cfg = load_config(recipe, [f"seed={seed}", f"run.storage={out / 'runs'}", f"run.name={name}",
                               f"eval.inception_n={n}", *overrides])
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"families: {name} ({cfg.train.max_steps} steps, log {log}) ...", flush=True)
    with open(log, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        result = train(cfg)
    run_dir = result.run_dir
    rows = pq.read_table(run_dir / "history.parquet").to_pylist()
    eval_seconds = sum(r.get("eval_seconds") or 0.0 for r in rows)
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    grid = out / "grids" / f"{name}.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    if grids:
        shutil.copy(grids[-1], grid)
    s = result.summary
    if cfg.model.arch == "cgan":  # how much class information G's images carry
        gen = load_generator(run_dir)
        s.eval.update(classification_accuracy_score(gen.G_ema, cfg.model.z_dim, resolve_source(cfg.data.source),
                                                    resolve_source("builtin:fashion-mnist-test"), n, seed + 5, "cpu"))
    row = {"recipe": recipe, "seed": seed, "status": s.status, "steps": s.steps, "workers": s.world_size,
           "wall_seconds": s.wall_seconds, "train_seconds": s.train_seconds - eval_seconds,
           "eval_seconds_during_training": eval_seconds,
           "eval": {k: v for k, v in s.eval.items() if isinstance(v, (int, float, str))},
           "fid_curve": [(r["step"], r["fid"]) for r in rows if r.get("fid") is not None],
           "grid": str(grid.relative_to(out))}
    print(f"families: {name}: {line(row)}", flush=True)
    return row


def run_classic(seconds: float, out: Path, z_dim: int, width: int, seed: int = 0, threads: int = 2,
                n: int = N) -> dict:
    """The classic loop for `seconds` of wall time on all the training images, then its eval."""
    torch.set_num_threads(threads)
    index = resolve_source("builtin:fashion-mnist")
    images = torch.from_numpy(read_real(index, index.num_samples, seed=seed)[0])
    loop = ClassicLoop(z_dim, width, torch.device("cpu"), reads=True, images=images, batch_size=64, seed=seed)
    print(f"families: the classic loop for {seconds:.0f} s ...", flush=True)
    trained = loop.train_for(seconds)
    G = ClassicGenerator(loop.netG).eval()
    t0 = time.perf_counter()
    metrics = inception_metrics(G, z_dim, 0, index, n, seed=seed + 3)
    grid = out / "grids" / f"classic-dcgan-s{seed}.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = np.concatenate([generate_block(G, block, 64, z_dim, seed) for block in (0, 1)])
        grid.write_bytes(image_grid_png(images, columns=8))
    row = {"recipe": CLASSIC, "seed": seed, "status": "completed",
           "steps": trained["steps"], "workers": 1, "torch_threads": threads,
           "wall_seconds": trained["seconds"] + time.perf_counter() - t0, "train_seconds": trained["seconds"],
           "eval": metrics, "fid_curve": [], "grid": str(grid.relative_to(out))}
    print(f"families: classic (seed {seed}): {line(row)}", flush=True)
    return row


def scores(row: dict) -> dict:
    """The final Inception metrics of a row under names without n (fid, kid, precision, recall)."""
    return unlabelled(row["eval"], int(row["eval"].get("inception_n", N)))


def classic_ratio(rows: list[dict]) -> dict | None:
    """BASELINE's FID over the classic loop's, each the mean over its seeds (None without both)."""
    ours = [scores(r)["fid"] for r in rows if r["recipe"] == BASELINE]
    theirs = [scores(r)["fid"] for r in rows if r["recipe"] == CLASSIC]
    if not ours or not theirs:
        return None
    ratio = float(np.mean(ours) / np.mean(theirs))
    return {"recipe_fid": ours, "classic_fid": theirs, "ratio": ratio, "goal": GOAL_RATIO, "met": ratio <= GOAL_RATIO}


def line(row: dict) -> str:
    ev, sc = row["eval"], scores(row)
    extra = f", class_match {ev['class_match']:.3f}" if "class_match" in ev else ""
    extra += f", CAS {ev['cas']:.3f} (real {ev['cas_real']:.3f})" if "cas" in ev else ""
    return (f"FID {sc['fid']:.2f}, KID {sc['kid']:.4f}, precision {sc['precision']:.3f}, recall {sc['recall']:.3f} "
            f"(n {ev.get('inception_n')}){extra}; {row['steps']} steps, {row['train_seconds'] / 60:.1f} min training")


def table(rows: list[dict]) -> str:
    out = ["| recipe | seed | FID | KID | precision | recall | n | steps | training | workers |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sc = scores(r)
        out.append(f"| {r['recipe']} | {r['seed']} | {sc['fid']:.2f} | {sc['kid']:.4f} | {sc['precision']:.3f} | "
                   f"{sc['recall']:.3f} | {r['eval'].get('inception_n')} | {r['steps']:,} | "
                   f"{r['train_seconds'] / 60:.0f} min | {r['workers']} |")
    return "\n".join(out)


def plot_curves(rows: list[dict], path: Path) -> None:
    """FID (periodic evals, eval.every_n samples) against steps, one line per run."""
    import matplotlib  # deferred on purpose: the plot is the only part that needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        if r["fid_curve"]:
            steps, fids = zip(*r["fid_curve"])
            ax.plot(steps, fids, marker="o", label=f"{r['recipe']} (seed {r['seed']})")
    ax.axhline(BEST_GAN, color="grey", linestyle="--", label=f"Lucic et al. 2018, best GAN ({BEST_GAN})")
    ax.set_xlabel("G steps")
    ax.set_ylabel("FID (Inception, periodic eval samples)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def seed_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of seeds (argparse's type: a bad one is a one-line usage error)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integer seeds: {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", action="append", default=[], metavar="RECIPE=S1,S2",
                        help="seeds of a recipe (default: 0, and 0,1 for dcgan-fashion and cgan-fashion)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--no-classic", action="store_true", help="leave out the classic loop")
    parser.add_argument("--classic-seeds", default=(0,), type=seed_list, metavar="S1,S2",
                        help="seeds of the classic loop, each trained for the same wall time (default 0)")
    parser.add_argument("--n", type=int, default=N, help="samples of the final Inception metrics (default 10000)")
    parser.add_argument("--out", type=Path, default=Path("families"))
    args = parser.parse_args()
    seeds = dict(SEEDS)
    for item in args.seeds:
        name, _, values = item.partition("=")
        seeds[name] = seed_list(values)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = f"{parser.prog} " + " ".join(
        [f"--recipes {args.recipes}", *(f"--seeds {s}" for s in args.seeds), *(f"--set {s}" for s in args.set),
         *([f"--n {args.n}"] if args.n != N else []),
         *([f"--classic-seeds {','.join(map(str, args.classic_seeds))}"] if args.classic_seeds != (0,) else []),
         "--no-classic" * args.no_classic]).strip()
    rows: list[dict] = []

    def record(row: dict) -> None:
        """Keep each run's row as it comes: a long benchmark that stops early keeps what it has."""
        rows.append(row)
        result = {"rows": rows, "lucic_2018_fashion": LUCIC_FASHION, "best_published_gan": BEST_GAN,
                  "classic_ratio": classic_ratio(rows), "command": command, "seconds": time.time() - started,
                  "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        (args.out / "families.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        plot_curves(rows, args.out / "fid-curves.png")

    names = args.recipes.split(",")
    if not args.no_classic and BASELINE not in names:
        raise SystemExit(f"the classic loop needs {BASELINE} in the same command (its training time)")
    # The baseline recipe first, then the classic loop for its training time, then the rest.
    order = sorted(names, key=lambda r: r != BASELINE)
    for recipe in order:
        for seed in seeds.get(recipe, (0,))[:1]:
            record(run_recipe(recipe, seed, args.out, args.set, args.n))
        if recipe == BASELINE and not args.no_classic:
            cfg, seconds = load_config(BASELINE), rows[-1]["train_seconds"]
            for seed in args.classic_seeds:  # each for the first seed's training time
                record(run_classic(seconds, args.out, cfg.model.z_dim, cfg.model.channels, seed=seed, n=args.n))
    for recipe in order:  # the further seeds last
        for seed in seeds.get(recipe, (0,))[1:]:
            record(run_recipe(recipe, seed, args.out, args.set, args.n))
    print(table(rows))
    ratio = classic_ratio(rows)
    if ratio is not None:
        print(f"{BASELINE} against the classic loop (mean FIDs over seeds): {ratio['ratio']:.3f} "
              f"(goal at most {GOAL_RATIO}: {'met' if ratio['met'] else 'missed'})")


if __name__ == "__main__":
    main()
