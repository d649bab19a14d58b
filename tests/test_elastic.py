"""Elastic training on a real multi-node Ray cluster on this machine (issue 22, item 4).

One `ray.cluster_utils.Cluster` serves the module (`integrations.ray.RehearsalCluster`): a
head without CPUs and three 1-CPU worker nodes. The first run (`--workers 1:3`) loses a node
at 3 workers and another at 2 (that one SIGKILLed, as a machine crashes), and completes on
the one that is left; the second (`--workers 1:2`) starts on that one,
grows when the test adds a node, and is then stopped by a SIGTERM (a node added is noticed
within Ray's 20-second look at the cluster, so the run is open-ended rather than timed).
Every run is the CLI's own code path, driven in-process with `--address` from a thread, while
this thread removes and adds nodes (Ray adds a node only from the main thread). Only this
cluster's processes are signalled. The 2-rank checkpoint resumed on 1 and 3 ranks is
tests/test_elastic_resume.py; the quality bar (ring8, 8/8 modes) is the benchmark
`python -m gan_dist.bench.elastic` (docs/elastic.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gan_dist.cli import main
from gan_dist.integrations.ray import RehearsalCluster
from gan_dist.monitor.metrics import TARGETS_FILE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EVERY = 20  # checkpoint.every: the most steps a fault may cost
ARGS = ["--set", "model.hidden=32", "--set", "data.batch_size=96", "--set", "train.log_every=10",
        "--set", f"checkpoint.every={EVERY}", "--set", "train.sample_every=100000", "--set", "run.max_failures=4",
        "--set", "run.resize_check_seconds=1", "--set", "metrics.port=0"]
WAIT_SECONDS = 300  # for any one event on a loaded machine


@pytest.fixture(scope="module")
def cluster(cache_dir):
    c = RehearsalCluster(nodes=3)
    yield c
    c.shutdown()


class Run:
    """`gan-dist train` in a thread; the calling thread changes the cluster meanwhile."""

    def __init__(self, address: str, storage: Path, name: str, steps: int, workers: str, *extra: str):
        self.run_dir = storage / name
        self.code: int | None = None
        argv = ["train", "--address", address, "--storage", str(storage), "--name", name,
                "--max-steps", str(steps), "--workers", workers, *ARGS, *extra]
        self.thread = threading.Thread(target=lambda: setattr(self, "code", main(argv)), daemon=True)
        self.thread.start()

    def checkpoint_at(self, world_size: int, after: int = 0) -> int:
        """Wait for a committed checkpoint written by `world_size` ranks past step `after`; its step."""
        deadline = time.time() + WAIT_SECONDS
        while time.time() < deadline and self.thread.is_alive():
            for manifest in sorted(self.run_dir.glob("step-*/manifest-00000.json"), reverse=True):
                try:
                    head = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    continue  # being written or pruned
                if head["world_size"] == world_size and head["step"] > after:
                    return head["step"]
            time.sleep(0.2)
        raise AssertionError(f"no checkpoint of {world_size} ranks after step {after} in {self.run_dir}")

    def summary(self) -> dict:
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), "the run did not end"
        return json.loads((self.run_dir / "summary.json").read_text())


def test_a_run_that_loses_two_nodes_goes_on_smaller_and_completes(cluster, tmp_path, capfd):
    run = Run(cluster.address, tmp_path, "shrink", 200, "1:3")
    first = run.checkpoint_at(3)
    lost = [cluster.remove_a_worker_node()]
    second = run.checkpoint_at(2, after=first)
    lost.append(cluster.remove_a_worker_node(graceful=False))  # a crash: Ray learns of it late
    summary = run.summary()
    assert run.code == 0 and summary["status"] == "completed" and summary["steps"] == 200, summary.get("error")
    assert summary["world_size"] == 1
    resizes = summary["resizes"]
    assert [(r["old_world_size"], r["new_world_size"]) for r in resizes] == [(3, 2), (2, 1)]
    # Each group resumed from the newest checkpoint (the one seen before the loss, or one
    # committed since): at most the interval in progress redone, plus the one before it when
    # the lost node went with that checkpoint's upload unfinished (docs/elastic.md). Seen: over 20
    # steps after the crash in CI, 30 here under load (2026-12-06).
    assert resizes[0]["step"] >= first and resizes[1]["step"] >= second
    assert all(r["steps_redone"] <= 2 * EVERY for r in resizes), resizes
    assert all(r["why"].startswith("worker group failed") for r in resizes)
    # Each group was sized for the nodes left: none waited out Ray Train's start timeout for
    # a worker that could not be placed (integrations.ray._ElasticScaling), not even after the
    # crashed node, which Ray still counted as alive when the group failed; and the wait for
    # Ray to notice is one cause, told once.
    assert not any("timed out" in r["why"] for r in resizes), resizes
    assert all(r["why"].count("worker group failed") == 1 for r in resizes), resizes
    assert "did not answer: waited" in resizes[1]["why"], resizes[1]
    # The global batch was kept through both resizes: 200 steps of 96 samples.
    assert summary["data"]["samples_seen"] == 200 * 96
    assert summary["restarts"] == 2
    # The cluster has no dashboard, so no state API: Ray Train's placement group cleaner
    # (left out for it) would have warned every second that it could not ask.
    assert "Failed to query Ray Train Controller" not in capfd.readouterr().err
    for resize, at in zip(resizes, lost):
        print(f"node lost at {resize['step']}: {resize['first_step_at'] - at:.1f} s to the first step on "
              f"{resize['new_world_size']} worker(s)")


def scrape(run_dir: Path) -> dict[str, float]:
    """The run's one Prometheus target, as its file-SD list names it: the unlabelled series."""
    target = json.loads((run_dir / TARGETS_FILE).read_text())[0]["targets"][0]
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    return {name: float(value) for name, value in
            (line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#") and "{" not in line)}


def test_a_run_grows_when_a_node_joins(cluster, tmp_path):
    assert len(cluster.nodes) == 1, "runs after the shrinking one, on the node it left"
    # One worker alone steps fast. Checkpoints every 200 steps, not 20, uploaded synchronously
    # by the writer thread (one in flight at most): Ray's asynchronous uploads queue up behind a
    # fast run, and a resize kills the group with the queue (seen: 800 steps redone).
    run = Run(cluster.address, tmp_path, "grow", 1_000_000, "1:2", "--set", "checkpoint.every=200",
              "--set", "checkpoint.async_upload=false")
    first = run.checkpoint_at(1)
    cluster.add_node()
    grown = run.checkpoint_at(2, after=first)
    metrics = scrape(run.run_dir)
    assert metrics["gan_world_size"] == 2 and metrics["gan_resizes_total"] == 1
    worker = next(iter(cluster.train_workers().values()))[0]
    os.kill(worker.pid, signal.SIGTERM)  # stop the open-ended run: a save, then exit
    summary = run.summary()
    assert summary["status"] == "stopped" and "preempted" in summary["reason"], summary
    assert summary["steps"] > grown and summary["world_size"] == 2
    (resize,) = summary["resizes"]
    assert (resize["old_world_size"], resize["new_world_size"]) == (1, 2)
    assert resize["why"].startswith("resources changed")
    # A resize to new resources kills the group wherever it is: the steps since the newest
    # checkpoint in the run directory are redone, and one more may have been in flight.
    assert resize["steps_redone"] <= 2 * 200
