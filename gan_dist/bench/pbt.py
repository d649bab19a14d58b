"""Population-based training against plain runs, side by side, in one command (the tune
issue's goals):

    python -m gan_dist.bench.pbt [--recipe grid25] [--population 4] [--max-steps 25000]
                                 [--perturb-every 2500] [--seed 0] [--set KEY=VALUE]... [--parallel N]
                                 [--out DIR]

1. `gan-dist tune RECIPE --population N` with the learning rates drawn log-uniformly over
   [1e-4, 1e-2], the gradient penalty over [0.01, 1] (log) and n_critic over 1..5, each member
   one worker, as a user would type it (a subprocess).
2. The same N starting points (each member's seed and drawn values, read back from the
   tune's record) as plain `gan-dist train` runs of the same steps, `--parallel` at a time
   (default: the CPUs), each a process of one worker, as each member: the same total
   compute, in G steps.
3. A member made to collapse: the tune of tests/test_tune_ray.py made longer, two ring8
   members of which one starts at a learning rate of 3.1 (seed 1); how many of its steps
   passed between its alarm and its replacement, and how long it waited.

Each run's final eval (G_ema) is judged against the recipe's bar (bench.quality). The table
is printed and everything goes to DIR (the tune, the plain runs, pbt.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from gan_dist.bench.quality import passes
from gan_dist.tune import records
from gan_dist.tune.spec import SPEC_FILE, TuneSpec

MUTATIONS = ("optim.lr=1e-4:1e-2:log", "loss.gp_weight=0.01:1:log", "schedule.n_critic=1:5")
# The collapse demonstration (tests/test_tune_ray.py, longer): seed 1 draws lrs of 5.2e-4 and 3.1.
COLLAPSE = ["ring8", "--population", "2", "--mutate", "optim.lr=1e-4:20:log", "--perturb-every", "500",
            "--max-steps", "2000", "--set", "seed=1", "--set", "monitor.collapse=warn",
            "--set", "monitor.divergence_loss_limit=10"]


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


def row_line(recipe: str, name: str, ev: dict, extra: str) -> str:
    ok = passes(recipe, ev) if ev else None
    bar = "-" if ok is None else "pass" if ok else "FAIL"
    if "modes_covered" not in ev:
        return f"| {name} | {json.dumps(ev)} | {bar} | {extra} |"
    return (f"| {name} | {ev['modes_covered']}/{ev['num_modes']} | {ev['high_quality_fraction']:.1%} "
            f"| {ev['mode_kl']:.4f} | {bar} | {extra} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gan_dist.bench.pbt", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="grid25")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=25_000, help="G steps of each member and plain run")
    parser.add_argument("--perturb-every", type=int, default=2_500)
    parser.add_argument("--seed", type=int, default=0, help="the tune's seed: it draws the starting points")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                        help="plain runs at a time (default: the CPUs, as the tune's members run)")
    parser.add_argument("--no-collapse", action="store_true", help="leave out the collapse demonstration")
    parser.add_argument("--out", type=Path, default=Path("pbt-bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sets = [a for s in [f"seed={args.seed}", *args.set] for a in ("--set", s)]
    mutate = [a for m in MUTATIONS for a in ("--mutate", m)]
    t0 = time.perf_counter()
    tune_dir = tune([args.recipe, "--population", str(args.population), *mutate, "--max-steps", str(args.max_steps),
                     "--perturb-every", str(args.perturb_every), *sets], args.out, "pbt", args.out / "pbt.log")
    tune_seconds = time.perf_counter() - t0
    summary = json.loads((tune_dir / records.SUMMARY_JSON).read_text())
    t1 = time.perf_counter()
    plain = plain_runs(tune_dir, args.out, args.parallel)
    plain_seconds = time.perf_counter() - t1
    result = {"command": "python -m gan_dist.bench.pbt " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "recipe": args.recipe,
              "mutations": list(MUTATIONS), "tune_seconds": tune_seconds, "tune": summary,
              "plain_seconds": plain_seconds, "plain_parallel": args.parallel, "plain": plain}
    if not args.no_collapse:
        collapse_dir = tune(COLLAPSE, args.out, "collapse", args.out / "collapse.log")
        result["collapse"] = collapse_delays(collapse_dir)
    (args.out / "pbt.json").write_text(json.dumps(result, indent=2, default=float))

    best = summary["best"]
    print(f"\n{args.recipe}: population {args.population}, {args.max_steps} steps each; PBT {tune_seconds:.0f} s, "
          f"plain runs {plain_seconds:.0f} s ({args.parallel} at a time)")
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
    print(f"written: {args.out / 'pbt.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
