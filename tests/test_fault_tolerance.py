"""Fault tolerance on a real multi-node Ray cluster on this machine.

One `RehearsalCluster` (a `ray.cluster_utils.Cluster`) serves the module: a head
without CPUs and three 1-CPU worker nodes, so 2 workers always sit on different nodes and a
lost node can be replaced. Every run is the CLI's own code path, driven
in-process with `--address`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from data_helpers import corrupt_image_dataset
from gan_dist.cli import main
from gan_dist.integrations.ray import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS, RehearsalCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = ["--workers", "2", "--set", "model.hidden=32", "--set", "data.batch_size=64",
        "--set", "train.log_every=20", "--set", "checkpoint.every=60", "--set", "train.sample_every=1000",
        "--set", "run.max_failures=3"]


@pytest.fixture(scope="module")
def cluster(cache_dir):
    c = RehearsalCluster(nodes=3)
    yield c
    c.shutdown()


def train(cluster: RehearsalCluster, storage: Path, name: str, steps: int, *extra: str) -> tuple[int, dict]:
    code = main(["train", "--address", cluster.address, "--storage", str(storage), "--name", name,
                 "--max-steps", str(steps), *ARGS, *extra])
    return code, json.loads((storage / name / "summary.json").read_text())


def when(condition, action, timeout: float = 240) -> threading.Thread:
    """Run `action()` once `condition()` holds (polled every 0.1 s, for `timeout` seconds)."""
    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                action()
                return
            time.sleep(0.1)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def when_checkpointed(run_dir: Path, step: int, action, timeout: float = 240) -> threading.Thread:
    """Run `action()` once the run has committed checkpoint `step` (then a little later)."""
    manifest = run_dir / f"step-{step:06d}" / "manifest-00000.json"
    return when(manifest.exists, lambda: (time.sleep(0.5), action()), timeout)


def signal_one_worker(sig: int, cluster: RehearsalCluster) -> None:
    workers = [proc for procs in cluster.train_workers().values() for proc in procs]
    assert workers, "no training worker to signal"
    os.kill(workers[-1].pid, sig)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ref")
    code, summary = train(cluster, storage, "ref", 240)
    assert code == 0 and summary["status"] == "completed" and summary["restarts"] == 0
    return summary


def test_a_sigkilled_worker_a_sigterm_and_a_truncated_checkpoint_leave_the_run_bit_for_bit(
        cluster, reference, tmp_path):
    """One run meets three faults in turn, each survived exactly: a worker SIGKILLed after
    checkpoint 60 (the group restarts), a worker SIGTERMed after the restarted group's first
    checkpoint (every rank saves at the next step and stops; the same command resumes), and
    its final checkpoint cut in half (the command falls back to the one before)."""
    run_dir = tmp_path / "faults"

    def kill_then_term():
        killed_at = time.time()
        signal_one_worker(signal.SIGKILL, cluster)
        # The SIGTERM once the restarted group has committed a checkpoint of its own.
        when(lambda: any(m.stat().st_mtime > killed_at + 1 for m in run_dir.glob("step-*/manifest-00000.json")),
             lambda: signal_one_worker(signal.SIGTERM, cluster)).join(240)
    watcher = when_checkpointed(run_dir, 60, kill_then_term)
    code, stopped = train(cluster, tmp_path, "faults", 240)
    watcher.join(1)
    assert code == 1 and stopped["status"] == "stopped", stopped
    assert stopped["restarts"] == 1  # the SIGKILL's; the SIGTERM is a clean exit, not a crash
    assert 60 < stopped["steps"] < 240 and "preempted" in stopped["reason"]
    assert (run_dir / f"step-{stopped['steps']:06d}").is_dir()  # saved where it stopped
    assert stopped["eval"] == {}  # a preempted run leaves its seconds to the save

    code, resumed = train(cluster, tmp_path, "faults", 240)
    assert code == 0 and resumed["status"] == "completed" and resumed["steps"] == 240
    assert resumed["fingerprint"] == reference["fingerprint"]
    # Ray Train's controller was asked to look at its workers every 0.5 s, not 2 s (a run
    # starts and ends seconds sooner); the driver's value is the one Ray Train passes on.
    assert os.environ[TRAIN_POLL_ENV] == TRAIN_POLL_SECONDS

    # The newest checkpoint (the final one) cut in half: the same command falls back to the
    # one before and trains the last 60 steps again, to the same weights.
    state = run_dir / "step-000240" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.warns(UserWarning, match="checksum"):
        code, again = train(cluster, tmp_path, "faults", 240)
    assert code == 0 and again["status"] == "completed" and again["steps"] == 240
    assert again["checkpoints"]["fallbacks"] == 1
    assert again["checkpoints"]["saved"] == 1  # resumed at 180 (from scratch would save 4 times)
    assert again["fingerprint"] == reference["fingerprint"]


def test_losing_a_node_that_hosts_a_worker(cluster, tmp_path):
    watcher = when_checkpointed(tmp_path / "node", 60, cluster.remove_a_worker_node)
    code, summary = train(cluster, tmp_path, "node", 240)
    watcher.join(1)
    assert code == 0 and summary["status"] == "completed" and summary["steps"] == 240
    assert summary["restarts"] >= 1


def test_an_error_that_a_restart_would_meet_again_fails_the_run_at_once(cluster, tmp_path):
    """Every shard holds an image that does not decode: past data.max_corrupt_fraction a worker
    raises DataError. Restarting from the last checkpoint would read the same shards, so the
    run fails without a restart, and its summary names the worker's own error, not Ray's
    "Training failed due to worker errors:"."""
    corrupt_image_dataset(tmp_path / "ds")
    code, summary = train(cluster, tmp_path, "bad", 1000, "--set", f"data.source={tmp_path / 'ds'}",
                          "--set", "model.arch=dcgan", "--set", "model.channels=8", "--set", "data.batch_size=4",
                          "--set", "monitor.class_coverage=false", "--set", "data.max_corrupt_fraction=0.05")
    assert code == 1 and summary["status"] == "failed", summary
    assert summary["restarts"] == 0
    assert summary["error"].startswith("rank ") and "DataError" in summary["error"], summary["error"]
    assert "max_corrupt_fraction" in summary["error"]
