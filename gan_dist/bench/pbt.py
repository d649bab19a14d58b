"""Population-based training against plain runs, side by side, in one command (the tune
issue's goals):

    python -m gan_dist.bench.pbt [--recipe grid25] [--population 4] [--max-steps 25000]
                                 [--perturb-every 2500] [--seed 0] [--set KEY=VALUE]... [--parallel N]
                                 [--mutate KEY=LOW:HIGH[:log]]... [--no-collapse] [--out DIR]

1. `gan-dist tune RECIPE --population N`, each member one worker, as a user would type it (a
   subprocess). A 2-D recipe mutates the learning rates, drawn log-uniformly over [1e-4, 1e-2],
   the gradient penalty over [0.01, 1] (log) and n_critic over 1..5; an image recipe (for
   example dcgan-fashion) G's and D's learning rates, each over [5e-5, 2e-3] (log), and ranks
   its members by Inception FID at every perturbation interval (`eval.every_steps` set to
   `--perturb-every` and `eval.every_n` to 500 unless `--set` says otherwise). `--mutate`
   replaces the mutations.
2. The same N starting points (each member's seed and drawn values, read back from the
   tune's record) as plain `gan-dist train` runs of the same steps, `--parallel` at a time
   (default: the CPUs), each a process of one worker, as each member: the same total
   compute, in G steps.
3. A member made to collapse: the tune of tests/test_tune_ray.py made longer, two ring8
   members of which one starts at a learning rate of 3.1 (seed 1); how many of its steps
   passed between its alarm and its replacement, and how long it waited.

Each run's final eval (G_ema) is judged against the recipe's bar (bench.quality) on 2-D
data: the goal is PBT's best member passing it. On images the goal is the best member's FID
(the end-of-run eval, `eval.inception_n` samples) at most 0.9x the best plain run's. The table
is printed and everything goes to DIR (the tune, the plain runs, pbt.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from gan_dist.api import load_config, train
from gan_dist.bench import description
from gan_dist.bench.quality import passes
from gan_dist.data.sources import resolve_source
from gan_dist.quality.metrics import n_label, unlabelled
from gan_dist.tune import records
from gan_dist.tune.spec import PERTURB_FACTORS, QUANTILE, RESAMPLE_PROBABILITY, SPEC_FILE, TuneSpec

MUTATIONS = ("optim.lr=1e-4:1e-2:log", "loss.gp_weight=0.01:1:log", "schedule.n_critic=1:5")
# Image recipes: G's and D's learning rates apart, a quarter to ten times DCGAN's 2e-4.
IMAGE_MUTATIONS = ("optim.lr_g=5e-5:2e-3:log", "optim.lr_d=5e-5:2e-3:log")
# Images: the periodic Inception eval that ranks the members (every perturbation interval).
IMAGE_EVAL_SAMPLES = 500
FID_GOAL = 0.9  # PBT's best FID against the best plain run's
# The collapse demonstration (tests/test_tune_ray.py's tune, longer): seed 1 draws lrs of 5.2e-4 and
# 3.1; at that width and batch the second member's losses pass 10 within ten steps, and the detectors
# act from the first log interval. (With ring8's own width, batch and detector warm-up, lr 3.1 trains.)
COLLAPSE = ["ring8", "--population", "2", "--mutate", "optim.lr=1e-4:20:log", "--perturb-every", "500",
            "--max-steps", "2000", "--set", "seed=1", "--set", "model.hidden=32", "--set", "data.batch_size=64",
            "--set", "train.log_every=10", "--set", "monitor.warmup_steps=0", "--set", "monitor.patience=1",
            "--set", "monitor.collapse=warn", "--set", "monitor.divergence_loss_limit=10"]


def tune(argv: list[str], storage: Path, name: str, log: Path) -> Path:
    """`gan-dist tune ARGV` in a subprocess, its output in `log`; the tune directory."""
    cmd = [sys.executable, "-m", "gan_dist", "tune", *argv, "--storage", str(storage), "--name", name]
    print(f"pbt: {' '.join(cmd[1:])} (log {log}) ...", flush=True)
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"pbt: the tune failed (exit {done.returncode}); see {log}")
    return storage / name


def plain_runs(tune_dir: Path, storage: Path, parallel: int) -> list[dict]:
    """Each member's starting point trained alone for the tune's steps: its seed, its drawn
    values, the recipe's own detector policies (a tune's `exploit` is for members only).
    `parallel` runs at a time, each in a process of its own (one worker of one thread, as a
    member's), as the tune ran its members on this machine's CPUs."""
    spec = TuneSpec.from_record(yaml.safe_load((tune_dir / SPEC_FILE).read_text()))
    own = load_config(spec.recipe).monitor
    jobs = []
    for i, values in enumerate(spec.initial):
        cfg = spec.member_config(i, values)
        cfg.monitor.collapse, cfg.monitor.divergence, cfg.monitor.nonfinite = own.collapse, own.divergence, own.nonfinite
        cfg.run.use_ray, cfg.run.workers, cfg.run.storage, cfg.run.name = False, "1", str(storage), f"plain-{i}"
        cfg.validate()
        jobs.append((i, values, cfg, storage / f"plain-{i}.log"))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=context) as pool:
        futures = []
        for i, values, cfg, log in jobs:
            print(f"pbt: plain run {i} ({', '.join(f'{k} {v:.4g}' for k, v in values.items())}, log {log}) ...",
                  flush=True)
            futures.append(pool.submit(_plain_run, cfg, log))
        seconds = [f.result() for f in futures]
    rows = []
    for (i, values, _, _), wall in zip(jobs, seconds):
        summary = json.loads((storage / f"plain-{i}" / "summary.json").read_text())
        rows.append({"run": f"plain-{i}", "start": values, "status": summary["status"], "steps": summary["steps"],
                     "eval": summary.get("eval", {}), "wall_seconds": wall})
    return rows


def _plain_run(cfg, log: Path) -> float:
    """One plain run, its output in `log`; its wall time."""
    t0 = time.perf_counter()
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        train(cfg)
    return time.perf_counter() - t0


def collapse_delays(tune_dir: Path) -> list[dict]:
    """For each replacement after a collapse: the member's steps between its alarm and the
    step it reported at (it stops there), and the seconds it waited for its copy."""
    reported = {(r["member"], r["step"]): r["time"] for r in records.read(tune_dir / records.RESULTS_FILE)
                if r["collapsed"]}
    out = []
    for e in records.read(tune_dir / records.EXPLOITS_FILE):
        if e["reason"] == "collapse":
            at = reported.get((e["member"], e["step"]))
            out.append({"member": e["member"], "alarm": e["alarm"], "replaced_at_step": e["step"],
                        "steps_after_alarm": e["step"] - e["alarm"]["step"], "source": e["source"],
                        "source_step": e["source_step"], "waited_seconds": None if at is None else e["time"] - at})
    return out


def inception(ev: dict) -> dict:
    """An image run's end-of-run Inception metrics without their sample-count suffix (fid2000 is
    fid); empty for a run without them."""
    return unlabelled(ev, ev["inception_n"]) if "inception_n" in ev else {}


def row_line(recipe: str, name: str, ev: dict, extra: str) -> str:
    if "inception_n" in ev:
        m = inception(ev)
        return (f"| {name} | {m['fid']:.2f} | {m['kid']:.4f} | {m['precision']:.3f} | {m['recall']:.3f} "
                f"| {extra} |")
    ok = passes(recipe, ev) if ev else None
    bar = "-" if ok is None else "pass" if ok else "FAIL"
    if "modes_covered" not in ev:
        return f"| {name} | {json.dumps(ev)} | {bar} | {extra} |"
    return (f"| {name} | {ev['modes_covered']}/{ev['num_modes']} | {ev['high_quality_fraction']:.1%} "
            f"| {ev['mode_kl']:.4f} | {bar} | {extra} |")


def verdict(recipe: str, best: dict | None, plain: list[dict]) -> dict:
    """The issue's goal for this recipe: on images PBT's best FID against the best plain run's
    (at most FID_GOAL times it), on 2-D data PBT's best member against the recipe's bar beside
    how many plain runs pass it."""
    best_eval = (best or {}).get("eval") or {}
    if "inception_n" in best_eval:
        fid = inception(best_eval)["fid"]
        plain_fids = [f for f in (inception(r["eval"]).get("fid", math.nan) for r in plain) if math.isfinite(f)]
        best_plain = min(plain_fids) if plain_fids else math.nan
        ratio = fid / best_plain if plain_fids else math.nan
        return {"metric": f"fid{n_label(best_eval['inception_n'])}", "pbt_best": fid, "plain_best": best_plain,
                "ratio": ratio, "goal": f"ratio <= {FID_GOAL}", "met": bool(ratio <= FID_GOAL)}
    ok = passes(recipe, best_eval) if best_eval else None
    plain_ok = [passes(recipe, r["eval"]) if r["eval"] else None for r in plain]
    return {"metric": "bar", "pbt_best_passes": ok, "plain_passing": sum(bool(p) for p in plain_ok),
            "plain_runs": len(plain), "goal": "PBT's best member meets the bar", "met": bool(ok)}


def image_recipe(recipe: str, sets: list[str]) -> bool:
    """Whether the recipe trains on images (an Inception eval ranks its members)."""
    cfg = load_config(recipe, sets)
    return resolve_source(cfg.data.source, cfg.data.cache_dir).meta.get("kind") == "image"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--recipe", default="grid25")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=25_000, help="G steps of each member and plain run")
    parser.add_argument("--perturb-every", type=int, default=2_500)
    parser.add_argument("--seed", type=int, default=0, help="the tune's seed: it draws the starting points")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                        help="plain runs at a time (default: the CPUs, as the tune's members run)")
    parser.add_argument("--mutate", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                        help="the tune's mutations (default: the recipe kind's, see above)")
    parser.add_argument("--synchronous", action="store_true", help="compare the tune's members in generations")
    parser.add_argument("--perturb-factors", metavar="DOWN:UP", help="the tune's explore factors (default "
                        f"{PERTURB_FACTORS[0]:g}:{PERTURB_FACTORS[1]:g})")
    parser.add_argument("--resample-probability", metavar="P", help=f"the tune's (default {RESAMPLE_PROBABILITY:g})")
    parser.add_argument("--quantile", metavar="Q", help=f"the tune's worst and best fraction (default {QUANTILE:g})")
    parser.add_argument("--no-collapse", action="store_true", help="leave out the collapse demonstration")
    parser.add_argument("--out", type=Path, default=Path("pbt-bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = image_recipe(args.recipe, args.set)
    settings = [f"seed={args.seed}", *args.set]
    if images:  # an Inception FID at every interval ranks the members; a user's --set comes last and wins
        settings = [f"eval.every_steps={args.perturb_every}", f"eval.every_n={IMAGE_EVAL_SAMPLES}", *settings]
    sets = [a for s in settings for a in ("--set", s)]
    mutations = args.mutate or (IMAGE_MUTATIONS if images else MUTATIONS)
    mutate = [a for m in mutations for a in ("--mutate", m)]
    t0 = time.perf_counter()
    mode = ["--synchronous"] if args.synchronous else []
    for option in ("perturb_factors", "resample_probability", "quantile"):
        if getattr(args, option) is not None:
            mode += [f"--{option.replace('_', '-')}", getattr(args, option)]
    tune_dir = tune([args.recipe, "--population", str(args.population), *mutate, "--max-steps", str(args.max_steps),
                     "--perturb-every", str(args.perturb_every), *mode, *sets], args.out, "pbt", args.out / "pbt.log")
    tune_seconds = time.perf_counter() - t0
    summary = json.loads((tune_dir / records.SUMMARY_JSON).read_text())
    t1 = time.perf_counter()
    plain = plain_runs(tune_dir, args.out, args.parallel)
    plain_seconds = time.perf_counter() - t1
    result = {"command": f"{parser.prog} " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "recipe": args.recipe,
              "mutations": list(mutations), "settings": settings, "tune_seconds": tune_seconds, "tune": summary,
              "plain_g_steps": sum(r["steps"] for r in plain),
              "plain_seconds": plain_seconds, "plain_parallel": args.parallel, "plain": plain,
              "verdict": verdict(args.recipe, summary["best"], plain)}
    if not args.no_collapse:
        collapse_dir = tune(COLLAPSE, args.out, "collapse", args.out / "collapse.log")
        result["collapse"] = collapse_delays(collapse_dir)
    (args.out / "pbt.json").write_text(json.dumps(result, indent=2, default=float))

    best = summary["best"]
    print(f"\n{args.recipe}: population {args.population}, {args.max_steps} steps each; PBT {tune_seconds:.0f} s, "
          f"plain runs {plain_seconds:.0f} s ({args.parallel} at a time); G steps trained: PBT "
          f"{summary['steps_trained']:,} (a copy from an earlier step trains steps again), plain runs "
          f"{result['plain_g_steps']:,}")
    if images:
        print("| run | FID | KID | precision | recall | start (and PBT's exploits) |")
    else:
        print("| run | modes | high quality | mode KL | bar | start (and PBT's exploits) |")
    print("| --- | --- | --- | --- | --- | --- |")
    if best is not None:
        print(row_line(args.recipe, f"PBT best ({best['member']})", best["eval"],
                       f"{summary['exploits_by_reason']['interval']} interval and "
                       f"{summary['exploits_by_reason']['collapse']} collapse exploits"))
    for r in plain:
        print(row_line(args.recipe, r["run"], r["eval"], ", ".join(f"{k} {v:.4g}" for k, v in r["start"].items())))
    for c in result.get("collapse", []):
        print(f"collapse: {c['member']} ({c['alarm']['kind']} at step {c['alarm']['step']}) replaced by "
              f"{c['source']}'s step {c['source_step']}, {c['steps_after_alarm']} steps after its alarm, "
              f"after waiting {c['waited_seconds'] or 0:.1f} s")
    v = result["verdict"]
    if v["metric"].startswith("fid"):
        print(f"goal ({v['goal']}): PBT's best FID {v['pbt_best']:.2f} against the best plain run's "
              f"{v['plain_best']:.2f}, ratio {v['ratio']:.3f}: {'met' if v['met'] else 'missed'}")
    else:
        print(f"goal ({v['goal']}): {'met' if v['met'] else 'missed'}; {v['plain_passing']} of {v['plain_runs']} "
              f"plain runs meet it")
    print(f"written: {args.out / 'pbt.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
