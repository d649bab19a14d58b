"""Checkpoint and restart costs of a DCGAN run on a local multi-node Ray cluster.

- checkpoint stall fraction: the time the step loop is blocked per checkpoint
  (snapshot, commit with asynchronous upload) over the full save time
  (snapshot, serialization and writing, synchronous upload, measured in a
  second run side by side on the same cluster);
- restart to first resumed step: from a SIGKILL of one worker to the end of
  the first step of the restarted worker group.

    python -m gan_dist.bench.fault [--recipe dcgan-digits] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from gan_dist.api import load_config, train as train_run
from gan_dist.bench import description
from gan_dist.integrations.ray import local_cluster


def train(address: str, storage: Path, name: str, recipe: str, steps: int, every: int, *overrides: str,
          workers: int = 2) -> dict:
    """A run of `recipe` on the cluster (gan_dist.train, as `gan-dist train` runs it), logged and
    checkpointed every `every` steps; its summary.json."""
    cfg = load_config(recipe, [f"run.address={address}", f"run.storage={storage}", f"run.name={name}",
                               f"run.workers={workers}", f"train.max_steps={steps}", f"checkpoint.every={every}",
                               f"train.log_every={every}", f"train.sample_every={steps}", *overrides])
    result = train_run(cfg)
    summary = json.loads((storage / name / "summary.json").read_text())
    if result.exit_code != 0:
        raise RuntimeError(f"run {name} failed: {summary.get('error')}")
    return summary


def _kill_a_worker_after(run_dir: Path, step: int, killed_at: list) -> threading.Thread:
    def watch():
        while not (run_dir / f"step-{step:06d}" / "manifest-00000.json").exists():
            time.sleep(0.05)
        for proc in psutil.process_iter(["cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith("ray::RayTrainWorker"):
                killed_at.append(time.time())
                os.kill(proc.pid, signal.SIGKILL)
                return
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


SYNC = ("checkpoint.async_upload=false",)


def stall_fraction(blocked: dict, full: dict) -> dict:
    """The checkpoint stall from the summaries of the same run with asynchronous (`blocked`)
    and synchronous (`full`) checkpoints."""
    # The final save also waits for pending uploads; compare the periodic ones.
    async_s = blocked["checkpoints"]["blocked_seconds"][:-1]
    sync = full["checkpoints"]
    full_s = [b + w for b, w in zip(sync["blocked_seconds"][:-1], sync["write_seconds"][:-1])]
    return {
        "world_size": blocked["world_size"], "checkpoints": len(async_s),
        "blocked_seconds": statistics.median(async_s),
        "full_save_seconds": statistics.median(full_s),
        "checkpoint_stall_fraction": statistics.median(async_s) / statistics.median(full_s),
    }


def run(recipe: str = "dcgan-digits", steps: int = 120, every: int = 20, extra: tuple[str, ...] = ()) -> dict:
    storage = Path(tempfile.mkdtemp(prefix="gan-dist-bench-"))
    with local_cluster(nodes=3) as address:
        blocked = train(address, storage, "async", recipe, steps, every, *extra)
        full = train(address, storage, "sync", recipe, steps, every, *extra, *SYNC)
        killed_at: list[float] = []
        watcher = _kill_a_worker_after(storage / "killed", 2 * every, killed_at)
        killed = train(address, storage, "killed", recipe, steps, every, *extra)
        watcher.join(1)
    restarted = [s for s in killed["sessions"] if s["started_at"] > killed_at[0]] if killed_at else []
    return {
        "recipe": recipe, **stall_fraction(blocked, full),
        "restarts": killed["restarts"],
        "restart_to_first_step_seconds": restarted[0]["first_step_at"] - killed_at[0] if restarted else None,
        "restore_seconds": restarted[0]["started_at"] - killed_at[0] if restarted else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--recipe", default="dcgan-digits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out")
    args = parser.parse_args()
    result = run(args.recipe, extra=tuple(args.set))
    result["overrides"] = args.set
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
