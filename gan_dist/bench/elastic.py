"""An elastic run through node loss and node arrival, and its final quality.

A ring8 run (the recipe as shipped: 25,000 steps, global batch 512) with `--workers 1:2` on a
local multi-node Ray cluster of two 1-CPU nodes: a node is removed for good at the first
checkpoint past a third of the run (2 -> 1 workers), a node is added at the next checkpoint
(1 -> 2), and a node is removed again at the first checkpoint past two thirds (2 -> 1). It
reports each resize (summary.json's record), the time from each node loss to the first step
at the new size as seen from here, the steps redone, and the run's final quality against the
recipe's bar (8/8 modes, at least 90% high-quality samples).

    python -m gan_dist.bench.elastic [--steps 25000] [--every 1000] [--out FILE.json]

The whole run takes as long as a ring8 run on one or two workers, plus three restarts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from gan_dist.api import load_config, train as train_run
from gan_dist.bench import description
from gan_dist.integrations.ray import RehearsalCluster

# The recipe's quality bar (docs/benchmarks.md, "Sample quality").
MODES, HIGH_QUALITY = 8, 0.90


def newest_checkpoint(run_dir: Path) -> tuple[int, int]:
    """(step, world size) of the newest committed checkpoint, or (0, 0)."""
    for manifest in sorted(run_dir.glob("step-*/manifest-00000.json"), reverse=True):
        try:
            head = json.loads(manifest.read_text())
            return head["step"], head["world_size"]
        except (OSError, ValueError):
            continue  # being written or pruned
    return 0, 0


def wait_for(run_dir: Path, alive: threading.Thread, step: int = 0, world_size: int = 0) -> int:
    """Wait for a checkpoint past `step` (of `world_size` ranks if given); its step, or 0 if the
    run ended first."""
    while alive.is_alive():
        found, ranks = newest_checkpoint(run_dir)
        if found > step and (not world_size or ranks == world_size):
            return found
        time.sleep(0.5)
    return 0


def run(steps: int = 25000, every: int = 1000, resize_check_seconds: float = 10.0) -> dict:
    storage = Path(tempfile.mkdtemp(prefix="gan-dist-bench-elastic-"))
    cfg = load_config("ring8", ["run.workers=[1, 2]", f"train.max_steps={steps}", f"checkpoint.every={every}",
                                f"run.resize_check_seconds={resize_check_seconds}", "run.max_failures=4",
                                f"run.storage={storage}", "run.name=elastic", "metrics.port=0"])
    cluster = RehearsalCluster(nodes=2)
    try:
        cfg.run.address = cluster.address
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(result=train_run(cfg)), daemon=True)
        thread.start()
        run_dir, events = storage / "elastic", []
        if wait_for(run_dir, thread, steps // 3, world_size=2):
            events.append(("node removed", cluster.remove_a_worker_node()))
            if wait_for(run_dir, thread, world_size=1):
                events.append(("node added", cluster.add_node()))
                if wait_for(run_dir, thread, 2 * steps // 3, world_size=2):
                    events.append(("node removed", cluster.remove_a_worker_node()))
        thread.join()
    finally:
        cluster.shutdown()
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [at for what, at in events if what == "node removed"]
    shrinks = [r for r in summary["resizes"] if r["new_world_size"] < r["old_world_size"]]
    evaluation = summary.get("eval", {})
    return {
        "status": summary["status"], "steps": summary["steps"], "events": [what for what, _ in events],
        "resizes": [{k: r[k] for k in ("step", "old_world_size", "new_world_size", "why", "steps_redone",
                                       "seconds_to_first_step")} for r in summary["resizes"]],
        "node_loss_to_first_step_seconds": [r["first_step_at"] - at for r, at in zip(shrinks, losses)
                                            if r["first_step_at"]],
        "max_steps_redone": max((r["steps_redone"] for r in summary["resizes"]), default=0),
        "checkpoint_every": every,
        "modes_covered": evaluation.get("modes_covered"), "high_quality_fraction": evaluation.get("high_quality_fraction"),
        "quality_bar_met": (evaluation.get("modes_covered") == MODES
                            and (evaluation.get("high_quality_fraction") or 0) >= HIGH_QUALITY),
        "wall_seconds": summary["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=description(__doc__))
    parser.add_argument("--steps", type=int, default=25000)
    parser.add_argument("--every", type=int, default=1000, help="checkpoint.every")
    parser.add_argument("--out")
    args = parser.parse_args()
    text = json.dumps(run(args.steps, args.every), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
