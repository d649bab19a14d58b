"""The example plug-in (examples/custom-model: a ResNet G and D and a relativistic loss of the
user's own, found through entry points) trained the way the built-in families are checked:
2 Ray workers on a multi-node Ray on this machine, a SIGKILL of a worker after a checkpoint
and an exact resume (the fingerprint of an uninterrupted run), the detectors, the run's
Prometheus target, `sample` and `eval`. Two runs of 100 steps: the reference, then the
killed one. Every run is the CLI's own code path, in this process, with `--address`.

The detectors: a short run of a healthy recipe does not collapse, so the mode-collapse
threshold is lowered until the run's own collapse score (1 - the fraction of the digits'
classes that the plug-in G's samples cover, under the eval's classifier) crosses it: the
signals are computed from the plug-in's images, the detector fires on them, its alert is
recorded and exported, and its state survives the kill.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from gan_dist.cli import main
from gan_dist.integrations.ray import RehearsalCluster
from gan_dist.monitor.metrics import TARGETS_FILE
from test_fault_tolerance import signal_one_worker, when_checkpointed

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RECIPE = REPO / "examples" / "custom-model" / "recipes" / "resnet-digits.yaml"
STEPS = 100
ARGS = ["--workers", "2", "--set", "model.channels=16", "--set", "model.options.d_channels=16",
        "--set", "train.log_every=20", "--set", "checkpoint.every=40", "--set", "train.sample_every=100",
        "--set", "run.max_failures=3", "--set", "metrics.port=0", "--set", "eval.num_samples=500",
        "--set", "monitor.warmup_steps=0", "--set", "monitor.patience=1",
        "--set", "monitor.collapse_threshold=0.01"]


@pytest.fixture(scope="module")
def cluster(cache_dir, example_installed):
    """A head without CPUs and two 1-CPU nodes (cache_dir holds builtin:digits and its eval
    classifier, trained briefly)."""
    c = RehearsalCluster(nodes=2)
    yield c
    c.shutdown()


def train(cluster, storage: Path, name: str) -> tuple[int, dict]:
    code = main(["train", str(RECIPE), "--address", cluster.address, "--storage", str(storage), "--name", name,
                 "--max-steps", str(STEPS), *ARGS])
    return code, json.loads((storage / name / "summary.json").read_text())


class Scraper(threading.Thread):
    """Scrapes the run's Prometheus target (named in its file-SD file) every half second while
    it trains; keeps the last scrape that answered."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.done, self.last = run_dir, threading.Event(), None

    def run(self):
        while not self.done.is_set():
            try:
                target = json.loads((self.run_dir / TARGETS_FILE).read_text())[0]["targets"][0]
                text = urllib.request.urlopen(f"http://{target}/metrics", timeout=5).read().decode()
                self.last = {(s.name, tuple(sorted(s.labels.items()))): s.value
                             for family in text_string_to_metric_families(text) for s in family.samples}
            except (OSError, ValueError, KeyError, IndexError):
                pass  # not serving yet, or no longer
            time.sleep(0.5)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ref")
    scraper = Scraper(storage / "ref")
    scraper.start()
    try:
        code, summary = train(cluster, storage, "ref")
    finally:
        scraper.done.set()
        scraper.join(10)
    assert code == 0, summary
    return storage / "ref", summary, scraper.last


def test_the_plugin_trains_on_two_ray_workers_and_raises_the_detectors(reference):
    run_dir, summary, _ = reference
    assert summary["status"] == "completed" and summary["steps"] == STEPS and summary["world_size"] == 2
    assert summary["restarts"] == 0 and summary["fingerprint"]
    stored = (run_dir / "config.yaml").read_text()
    assert "arch: custom-resnet" in stored and "kind: custom-rsgan" in stored and "d_channels: 16" in stored
    collapse = [a for a in summary["alerts"] if a["kind"] == "mode_collapse"]
    assert collapse and all(a["action"] == "warn" for a in collapse), summary["alerts"]
    # Each alert carries the row it fired on: a collapse score over the threshold, computed from
    # the class coverage of the plug-in G's samples.
    for alert in collapse:
        assert alert["evidence"]["collapse_score"] > 0.01, alert
        assert 0 <= alert["evidence"]["mode_coverage_ratio"] <= 1, alert
    assert 0 <= summary["final"]["collapse_score"] <= 1 and 0 <= summary["final"]["mode_coverage_ratio"] <= 1
    assert 0 <= summary["eval"]["class_coverage"] <= 1 and summary["eval"]["classifier_accuracy"] > 0.5


def test_the_plugin_run_serves_its_metrics(reference):
    _, _, scraped = reference
    assert scraped is not None, "the run's Prometheus target never answered"
    assert 0 < scraped[("gan_train_step", ())] <= STEPS
    assert ("gan_loss", (("net", "D"),)) in scraped and ("gan_loss", (("net", "G"),)) in scraped
    assert scraped[("gan_instability_events_total", (("kind", "mode_collapse"),))] >= 1
    assert 0 <= scraped[("gan_collapse_score", ())] <= 1


def test_sigkill_of_a_worker_resumes_the_plugin_run_exactly(cluster, reference, tmp_path):
    _, ref, _ = reference
    watcher = when_checkpointed(tmp_path / "killed", 40, lambda: signal_one_worker(signal.SIGKILL, cluster))
    code, summary = train(cluster, tmp_path, "killed")
    watcher.join(1)
    assert code == 0, summary
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["restarts"] >= 1
    assert summary["fingerprint"] == ref["fingerprint"]
    # The detectors' state is in every checkpoint: the resumed run raised what the reference did.
    assert [(a["kind"], a["step"]) for a in summary["alerts"]] == [(a["kind"], a["step"]) for a in ref["alerts"]]


def test_sample_and_eval_of_the_plugin_run(reference, tmp_path, capsys):
    run_dir, summary, _ = reference
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "16", "--out", str(out)]) == 0
    assert f"from custom-resnet G_ema at step {STEPS}" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    # The checkpoint's G_ema gives what the run's own final eval gave.
    assert result["step"] == STEPS
    assert {k: v for k, v in result.items() if k != "step"} == pytest.approx(summary["eval"])
