"""A real Prometheus server scrapes a live 2-worker Ray run through the run's file-SD target
list and evaluates the shipped alert rules: it sees `gan_train_step` rise, and the collapse
alert go to firing on a run configured to collapse.

The server is Debian's `prometheus` (make test installs it into the venv), on loopback, with a
generated config; the rules are cluster/prometheus/alerts.yml with their `for` durations
shortened from minutes to seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from gan_dist.monitor.metrics import TARGETS_FILE

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "cluster" / "prometheus" / "alerts.yml"


def prometheus_binary() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("prometheus", path=path)
    assert found, "prometheus is missing: `make test` installs it (tests/tools/ensure-tools.sh)"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_step(port: int) -> float | None:
    result = api(port, "query", query="gan_train_step")["result"]
    return float(result[0]["value"][1]) if result else None


def firing(port: int, name: str) -> list[dict]:
    return [a for a in api(port, "alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == "firing"]


@pytest.fixture
def collapsing_run(tmp_path, cache_dir):
    """A 2-worker run on a local Ray whose G barely learns (lr_g 1e-7): it covers no mode of
    ring8, a collapse by construction; its metrics on a free loopback port. Longer than the
    test waits: the test stops it."""
    run_dir = tmp_path / "runs" / "collapse"
    run_dir.mkdir(parents=True)  # Prometheus watches the target file's folder from the start
    env = dict(os.environ, GAN_DIST_CACHE=str(cache_dir), PYTHONUNBUFFERED="1")
    args = ["train", "ring8", "--workers", "2", "--storage", str(run_dir.parent), "--name", "collapse",
            "--max-steps", "100000", "--set", "model.hidden=32", "--set", "data.batch_size=256",
            "--set", "train.log_every=50", "--set", "optim.lr_g=1e-7", "--set", "monitor.warmup_steps=200",
            "--set", "metrics.port=0"]
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield run_dir, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def prometheus(tmp_path, collapsing_run):
    run_dir, _ = collapsing_run
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "gan-dist",
                            "file_sd_configs": [{"files": [str(run_dir / TARGETS_FILE)], "refresh_interval": "1s"}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([prometheus_binary(), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("Prometheus to answer", lambda: api(port, "status/buildinfo"), timeout=60)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_scrapes_a_live_run_and_the_collapse_alert_fires(collapsing_run, prometheus):
    run_dir, run = collapsing_run
    port = prometheus
    # The run's target list names its endpoint; Prometheus finds it there and scrapes it.
    # (wait_for fails the test when its probe stays false.)
    first = wait_for("gan_train_step > 0 in Prometheus", lambda: train_step(port), timeout=240)
    wait_for("gan_train_step to rise", lambda: (v := train_step(port)) and v > first, timeout=120)
    targets = api(port, "targets")["activeTargets"]
    assert targets and targets[0]["labels"]["run"] == "collapse" and targets[0]["health"] == "up"
    # The shipped collapse rule, on the run's own gan_collapse_score, goes to firing. G covers
    # no mode at all, so the score is not just over the rule's 0.5 but at its maximum, 1.
    alert = wait_for("GanModeCollapse to fire", lambda: firing(port, "GanModeCollapse"), timeout=120)
    assert alert[0]["labels"]["run"] == "collapse" and float(alert[0]["value"]) == 1.0, alert
    detector = wait_for("GanDetectorAlert{kind=mode_collapse}",
                        lambda: [a for a in firing(port, "GanDetectorAlert")
                                 if a["labels"]["kind"] == "mode_collapse"], timeout=60)
    assert detector[0]["labels"]["run"] == "collapse", detector
    assert not firing(port, "GanTrainingStalled")
    # `kill` of the command (a deleted pod): the driver passes the SIGTERM on, and every rank
    # saves at its next step and stops, the alert in the run's summary.
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 1 and "gan-dist: SIGTERM: every rank saves at its next step" in out, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and "preempted" in summary["reason"] and summary["world_size"] == 2
    assert summary["steps"] < 100000 and (run_dir / f"step-{summary['steps']:06d}" / "manifest-00000.json").exists()
    assert any(a["kind"] == "mode_collapse" for a in summary["alerts"])
    assert re.search(r"alert at step \d+: mode_collapse", out)
    # A rank's lines reach the console once (Ray Train's print patch logged them a second time).
    alerts = re.findall(r"alert at step \d+: \w+ since step \d+", out)
    assert len(alerts) == len(set(alerts)), alerts
