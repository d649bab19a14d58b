"""Monitoring: detectors on scripted rows, the collapse signals, the metrics endpoint and its
file-SD target, the Pushgateway push, and the policies (warn, rollback, stop) in real runs."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.config import MonitorConfig
from gan_dist.data.pack import PackOptions, pack
from gan_dist.evaluate import classify, domain_classifier, generate_images
from gan_dist.inference import load_generator
from gan_dist.monitor.detectors import Detectors
from gan_dist.monitor.hub import RunHub
from gan_dist.monitor.metrics import CATALOG, TARGETS_FILE, TUNE_ONLY
from gan_dist.monitor.signals import class_signals, collapse_score, duplicate_rate
from gan_dist.trainer import loop
from gan_dist.trainer.worker import Worker

pytestmark = pytest.mark.unit

HEALTHY = {"loss_d": 1.30, "loss_g": 0.75, "d_acc_real": 0.7, "d_acc_fake": 0.6, "grad_norm_d": 0.5,
           "grad_norm_g": 1.0, "collapse_score": 0.05, "nonfinite_steps": 0}


def rows(n: int, start: int = 0, every: int = 100, **changes):
    """n healthy rows (with a little noise in the losses), with `changes` from row index 0."""
    for i in range(n):
        row = dict(HEALTHY, step=start + (i + 1) * every)
        row["loss_d"] += 0.01 * ((-1) ** i)
        row["loss_g"] += 0.01 * ((-1) ** (i // 2))
        row.update({k: (v(i) if callable(v) else v) for k, v in changes.items()})
        yield row


def feed(det: Detectors, series) -> list:
    fired = []
    for row in series:
        fired += det.update(row)
    return fired


def cfg(**kw) -> MonitorConfig:
    return MonitorConfig(**{"warmup_steps": 500, "patience": 3, **kw})


def test_healthy_series_raises_nothing():
    det = Detectors(cfg())
    assert feed(det, rows(60)) == []
    assert not det.raised()


def test_collapse_fires_after_patience_once_and_clears():
    det = Detectors(cfg())
    feed(det, rows(10))  # up to step 1000
    fired = feed(det, rows(2, start=1000, collapse_score=0.9))
    assert fired == [] and det.raised()  # within its patience
    fired = feed(det, rows(4, start=1200, collapse_score=0.9))
    assert [(e.kind, e.step, e.onset_step, e.action) for e in fired] == [("mode_collapse", 1300, 1100, "warn")]
    assert det.alert_flags()["mode_collapse"] == 1.0
    feed(det, rows(1, start=1600))
    assert det.alert_flags()["mode_collapse"] == 0.0 and not det.raised()


def test_nothing_counts_during_warmup_except_nonfinite_values():
    det = Detectors(cfg(warmup_steps=10_000))
    assert feed(det, rows(20, collapse_score=0.9)) == []
    fired = feed(det, rows(1, start=2000, loss_g=float("nan")))
    assert [e.kind for e in fired] == ["nonfinite"] and fired[0].evidence["nonfinite_values"] == ["loss_g"]
    fired = feed(det, rows(1, start=2100, nonfinite_steps=3))
    assert fired == []  # still active: the condition held in the row before
    feed(det, rows(1, start=2200, nonfinite_steps=3))  # no new skips: clears
    assert [e.kind for e in feed(det, rows(1, start=2300, nonfinite_steps=4))] == ["nonfinite"]


def test_under_fp16_scaling_skipped_updates_count_only_when_they_persist():
    det = Detectors(cfg(), scaled=True)
    skips = [0, 5, 5, 6, 6, 6, 6, 7, 7]  # the scaler finding its scale, then a skip now and then
    assert feed(det, rows(9, nonfinite_steps=lambda i: skips[i])) == []
    fired = feed(det, rows(3, start=900, nonfinite_steps=lambda i: 10 + 50 * i))  # every step skipped
    assert [e.kind for e in fired] == ["nonfinite"] and fired[0].onset_step == 1000
    assert [e.kind for e in feed(det, rows(1, start=1200, loss_d=float("nan")))] == []  # still active
    det = Detectors(cfg(), scaled=True)
    assert [e.kind for e in feed(det, rows(1, loss_d=float("inf")))] == ["nonfinite"]  # a value: at once


def test_d_overpowering_needs_a_climbing_g_loss():
    flat = Detectors(cfg())
    feed(flat, rows(10))
    assert feed(flat, rows(8, start=1000, d_acc_fake=0.99, d_acc_real=0.99)) == []  # G's loss does not climb
    climbing = Detectors(cfg())
    feed(climbing, rows(10))
    fired = feed(climbing, rows(8, start=1000, d_acc_fake=0.99, d_acc_real=0.99, loss_g=lambda i: 1.0 + 0.5 * i))
    assert [e.kind for e in fired] == ["d_overpowering"] and fired[0].step == 1300
    lost = Detectors(cfg())  # calls everything fake: wrong on half the reals, not overpowering
    feed(lost, rows(10))
    assert feed(lost, rows(8, start=1000, d_acc_fake=0.99, d_acc_real=0.5, loss_g=lambda i: 1.0 + 0.5 * i)) == []


def test_exploding_and_vanishing_gradients_against_their_moving_median():
    det = Detectors(cfg())
    feed(det, rows(10))
    fired = feed(det, rows(3, start=1000, grad_norm_d=1e3))
    assert [e.kind for e in fired] == ["exploding_gradients"] and "grad_norm_d" in fired[0].evidence
    det = Detectors(cfg())
    feed(det, rows(10))
    assert [e.kind for e in feed(det, rows(3, start=1000, grad_norm_g=1e-4))] == ["vanishing_gradients"]


def test_divergence_from_loss_variance_and_from_a_huge_loss():
    det = Detectors(cfg())
    feed(det, rows(30))
    fired = feed(det, rows(6, start=3000, loss_d=lambda i: 1.3 + (5.0 if i % 2 else -5.0)))
    assert [e.kind for e in fired] == ["divergence"] and "loss_d_variance" in fired[0].evidence
    det = Detectors(cfg())
    feed(det, rows(10))
    assert [e.kind for e in feed(det, rows(3, start=1000, loss_g=1e5))] == ["divergence"]


def test_a_single_loss_spike_is_not_divergence():
    """A healthy ring8 run (seed 4 of the recipe) had G's loss jump from 0.77 to 0.88 for one
    interval and come straight back: the window's variance was 60x its usual, for as long as
    the spike stayed in the window. Two spiking intervals in a window still count."""
    det = Detectors(cfg())
    feed(det, rows(30))
    assert feed(det, rows(12, start=3000, loss_g=lambda i: 1.2 if i == 1 else 0.77)) == []
    det = Detectors(cfg())
    feed(det, rows(30))
    fired = feed(det, rows(12, start=3000, loss_g=lambda i: 1.2 if i in (1, 3) else 0.77))
    assert [e.kind for e in fired] == ["divergence"] and "loss_g_variance" in fired[0].evidence


def test_a_phase_change_starts_the_loss_windows_afresh():
    """srgan-photos: G's loss is a small MSE with a tiny spread for 4000 steps (the SRResNet
    phase), then gains D's adversarial term and with it a spread 10^4 times larger. Judged
    against the old phase's spread that is divergence (a run raised it); the phase start
    makes the windows start afresh."""
    srresnet = list(rows(40, loss_g=lambda i: 3e-4 + 1e-6 * (-1) ** i))
    srgan = list(rows(10, start=4000, loss_g=lambda i: 1e-3 + 1e-4 * (-1) ** i))
    assert [e.kind for e in feed(Detectors(cfg()), srresnet + srgan)] == ["divergence"]
    assert feed(Detectors(cfg(), phase_starts=(4000,)), srresnet + srgan) == []
    # Resumed mid-phase from a checkpoint's state: the same
    det = Detectors(cfg(), phase_starts=(4000,))
    feed(det, srresnet)
    resumed = Detectors(cfg(), phase_starts=(4000,))
    resumed.load_state_dict(det.state_dict())
    assert feed(resumed, srgan) == []


def test_policies_rollback_until_retries_run_out_then_stop():
    det = Detectors(cfg(collapse="rollback", max_rollbacks=1))
    feed(det, rows(10))
    assert [e.action for e in feed(det, rows(3, start=1000, collapse_score=1.0))] == ["rollback"]
    det.rollbacks, det.active["mode_collapse"], det.streak["mode_collapse"] = 1, False, 0
    assert [e.action for e in feed(det, rows(3, start=1300, collapse_score=1.0))] == ["stop"]
    off = Detectors(cfg(collapse="off"))
    assert feed(off, rows(20, collapse_score=1.0)) == []


def test_detector_state_round_trips_through_a_checkpoint():
    series = list(rows(12, collapse_score=lambda i: 0.9 if i >= 7 else 0.1, grad_norm_d=lambda i: 10.0 ** (i - 9)))
    straight = Detectors(cfg())
    expected = [e.to_dict() for e in feed(straight, series)]
    first = Detectors(cfg())
    feed(first, series[:8])
    state = ckpt.from_bytes(ckpt.to_bytes(first.state_dict()), "detectors")  # weights_only load
    resumed = Detectors(cfg())
    resumed.load_state_dict(state)
    got = [e.to_dict() for e in feed(first, [])] + [e.to_dict() for e in feed(resumed, series[8:])]
    assert got == [e for e in expected if e["step"] > series[7]["step"]] and got


def test_collapse_signals():
    torch.manual_seed(0)
    real = torch.randn(256, 2)
    assert duplicate_rate(torch.randn(256, 2), real) == pytest.approx(0.1, abs=0.06)
    assert duplicate_rate(torch.randn(256, 2) * 1e-3, real) > 0.95
    assert collapse_score({"mode_coverage_ratio": 0.25, "duplicate_rate": 0.1, "diversity_ratio": 1.0}) == 0.75
    assert collapse_score({"duplicate_rate": 0.1, "diversity_ratio": 0.2}) == pytest.approx(0.8)
    assert collapse_score({"diversity_ratio": float("nan")}) == 1.0
    # 2-D mixtures: samples drawn tighter than the data's are not duplicates of a collapse.
    sharp = {"mode_coverage_ratio": 1.0, "duplicate_rate": 0.7, "diversity_ratio": 1.0}
    assert collapse_score(sharp) > 0.6 and collapse_score(sharp, duplicates=False) == 0.0


def test_mode_coverage_counts_a_mode_with_a_tenth_of_its_fair_share_of_good_samples():
    from gan_dist.data.builtin import grid25
    from gan_dist.evaluate import mode_metrics
    from gan_dist.monitor.signals import mode_signals

    mixture = grid25()
    means, std = np.asarray(mixture.means), mixture.std
    meta = {"means": mixture.means, "std": std}
    rng = np.random.default_rng(0)
    good, _ = mixture.sample(2500, rng)
    assert mode_signals(good, meta) == pytest.approx({"mode_coverage_ratio": 1.0, "high_quality_fraction": 1.0},
                                                     abs=0.01)
    # Smeared over the plane: a few good samples near every mode pass the eval's one-sample rule.
    smeared = rng.uniform(-5, 5, (2500, 2))
    assert mode_metrics(smeared, means, std)["modes_covered"] >= 15
    assert mode_signals(smeared, meta)["mode_coverage_ratio"] == 0
    # Three modes hold nearly everything: the others' single samples do not count.
    few = np.concatenate([np.repeat(means[:3], 800, axis=0), means[3:]]) + rng.normal(0, std / 2, (2422, 2))
    assert mode_signals(few, meta)["mode_coverage_ratio"] == pytest.approx(3 / 25)


class Quadrants(torch.nn.Module):
    """A classifier of 4 classes: which quadrant of the image is brightest."""

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return torch.stack([x[..., :h, :w].mean((1, 2, 3)), x[..., :h, w:].mean((1, 2, 3)),
                            x[..., h:, :w].mean((1, 2, 3)), x[..., h:, w:].mean((1, 2, 3))], 1)


def quadrant_images(labels, size: int = 16, seed: int = 0) -> np.ndarray:
    """Images in [-1, 1] (N, 1, size, size): noise, with the quadrant of each label bright."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, -0.4, (len(labels), 1, size, size)).astype(np.float32)
    h = size // 2
    for i, k in enumerate(labels):
        x[i, 0, (k // 2) * h:(k // 2 + 1) * h, (k % 2) * h:(k % 2 + 1) * h] += 1.2
    return x


def test_class_coverage_under_a_classifier_joins_the_collapse_score():
    every = torch.from_numpy(quadrant_images(np.arange(256) % 4))
    assert float(class_signals(every, Quadrants(), 4)["mode_coverage_ratio"]) == 1.0
    one = torch.from_numpy(quadrant_images(np.full(256, 2)))
    found = class_signals(one, Quadrants(), 4)
    assert float(found["mode_coverage_ratio"]) == 0.25
    assert collapse_score({**{k: float(v) for k, v in found.items()}, "diversity_ratio": 1.0}) == 0.75
    # A class with a few samples, under a tenth of its fair share (256 / 4 / 10), is not covered.
    few = torch.from_numpy(quadrant_images(np.r_[np.zeros(250, int), np.ones(6, int)]))
    assert float(class_signals(few, Quadrants(), 4)["mode_coverage_ratio"]) == 0.25


@pytest.mark.slow  # packs images, trains the eval's classifier, then G: about 15-30 s here
def test_labelled_images_get_live_class_coverage_and_the_image_eval(tmp_path, cache_dir):
    """A short run on labelled images: the eval's classifier, trained at the start, gives the
    history's class coverage while the run goes, and the eval's class metrics at the end."""
    labels = np.arange(512) % 4
    np.savez(tmp_path / "quadrants.npz", images=((quadrant_images(labels) + 1) * 127.5).astype(np.uint8),
             labels=labels)
    index = pack(str(tmp_path / "quadrants.npz"), tmp_path / "data", PackOptions(shard_samples=128, encode="png"))
    # The run trains the classifier when the cache lacks it (1500 steps); a shorter training,
    # cached under the same key, keeps the test quick (the task is easy).
    domain_classifier(index, torch.device("cpu"), steps=100)
    argv = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "img", "--max-steps", "30",
            "--set", f"data.source={tmp_path / 'data'}", "--set", "model.arch=dcgan", "--set", "model.channels=8",
            "--set", "model.z_dim=16", "--set", "data.batch_size=32", "--set", "train.log_every=10",
            "--set", "metrics.port=0", "--set", "eval.num_samples=256"]
    assert main(argv) == 0
    rows = pq.read_table(tmp_path / "img" / "history.parquet").to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert row["mode_coverage_ratio"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # classes covered, of 4
        assert row["collapse_score"] >= 1 - row["mode_coverage_ratio"] - 1e-6
    found = json.loads((tmp_path / "img" / "summary.json").read_text())["eval"]
    assert found["classifier_accuracy"] > 0.9
    assert np.isfinite(found["fid_domain"]) and np.isfinite(found["kid_domain"])
    # The class metrics, counted here from the final G_ema's eval samples under the cached
    # classifier: a class is covered by a tenth of its fair share (256 / 4 / 10) of samples,
    # and the KL is against the data's classes, which are balanced.
    gen = load_generator(str(tmp_path / "img"))
    fake, _ = generate_images(gen.G_ema, 256, 16, gen.cfg.seed + 1, "cpu")
    net, _ = domain_classifier(index, torch.device("cpu"))
    counts = np.bincount(classify(net, fake, "cpu")[0], minlength=4)
    assert found["class_coverage"] == (counts >= 6.4).mean()
    p = counts / 256
    expected_kl = sum(pk * np.log(pk / 0.25) for pk in p if pk > 0)
    assert found["class_kl"] == pytest.approx(expected_kl, abs=1e-4)


# DESIGN.md, "Metrics": the names tests and dashboards rely on.
DESIGN_METRICS = {"gan_train_step", "gan_loss", "gan_d_accuracy", "gan_d_output_gap", "gan_grad_norm",
                  "gan_diversity_ratio", "gan_mode_coverage_ratio", "gan_collapse_score", "gan_alert_active",
                  "gan_instability_events_total", "gan_nonfinite_steps_total", "gan_rollbacks_total",
                  "gan_worker_restarts_total", "gan_checkpoint_seconds", "gan_samples_per_second",
                  "gan_data_wait_seconds", "gan_data_corrupt_samples_total"}


def test_catalog_declares_the_design_metrics_with_prometheus_names():
    assert DESIGN_METRICS <= set(CATALOG)
    for name, (kind, _, labels) in CATALOG.items():
        assert name.startswith("gan_") and name.endswith("_total") == (kind == "counter"), name
        assert len(labels) <= 1, name  # low cardinality


def _scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_hub_serves_the_catalog_and_counts_replayed_events_once(tmp_path):
    hub = RunHub(max_steps=100)
    target = hub.serve_metrics("127.0.0.1", 0, str(tmp_path), {"run": "r1"})
    try:
        targets = json.loads((tmp_path / TARGETS_FILE).read_text())
        assert targets == [{"targets": [target], "labels": {"run": "r1"}}]
        hub.started(2, 0)
        hub.progress(dict(HEALTHY, step=50, nonfinite_steps=2, alert_mode_collapse=1.0, corrupt_samples=3.0))
        event = {"step": 50, "kind": "mode_collapse", "onset_step": 30, "action": "warn", "rollbacks": 0}
        hub.alert(event)
        hub.started(2, 40)  # a restarted group replays steps 40..50: the same event, smaller totals
        hub.progress(dict(HEALTHY, step=45, nonfinite_steps=1))
        hub.alert(dict(event))
        hub.progress(dict(HEALTHY, step=60, nonfinite_steps=2))
        got = _scrape(f"http://{target}/metrics")
        for name, (kind, _, _) in CATALOG.items():
            # gan-dist tune's own series are on a tune's target only (tests/test_tune_spec.py).
            assert any(n.startswith(name) for n, _ in got) != (name in TUNE_ONLY), name
        assert got[("gan_train_step", ())] == 60
        assert got[("gan_loss", (("net", "G"),))] == HEALTHY["loss_g"]
        assert got[("gan_alert_active", (("kind", "mode_collapse"),))] == 1.0
        assert got[("gan_instability_events_total", (("kind", "mode_collapse"),))] == 1
        assert got[("gan_nonfinite_steps_total", ())] == 2
        assert got[("gan_worker_restarts_total", ())] == 1
        assert got[("gan_data_corrupt_samples_total", ())] == 3
        assert len(hub.snapshot().alerts) == 1
    finally:
        hub.close()


class _Pushgateway(BaseHTTPRequestHandler):
    received: list = []
    auth: list = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append((self.path, body))
        self.auth.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def pushgateway():
    """A Pushgateway stand-in on loopback that records what is pushed; its URL."""
    server = HTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_final_values_are_pushed_with_basic_auth_and_credentials_are_never_printed(tmp_path, cli, pushgateway):
    """Basic auth from a file (or the environment), never in the URL, which is printed and stored."""
    hub = RunHub(max_steps=10)
    hub.progress(dict(HEALTHY, step=10))
    assert hub.close(pushgateway, "run-8", ("alice", "s3cret")) is None
    assert _Pushgateway.auth[-1] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    r = cli("train", "--dry-run", "--set", "metrics.pushgateway=http://alice:s3cret@127.0.0.1:9091")
    assert r.returncode == 2 and "must not hold credentials" in r.stderr and "s3cret" not in r.stderr + r.stdout
    (tmp_path / "auth").write_text("alice:s3cret\n")
    r = cli("train", "--dry-run", "--set", "metrics.pushgateway=http://127.0.0.1:9091",
            "--set", f"metrics.pushgateway_auth_file={tmp_path / 'auth'}", "--storage", str(tmp_path / "runs"))
    assert r.returncode == 0 and "s3cret" not in r.stderr + r.stdout
    r = cli("train", "--dry-run", "--set", "metrics.pushgateway=http://127.0.0.1:9091",
            "--set", f"metrics.pushgateway_auth_file={tmp_path / 'none'}")
    assert r.returncode == 2 and "pushgateway_auth_file" in r.stderr


def test_final_values_are_pushed_to_a_pushgateway(tmp_path, pushgateway):
    hub = RunHub(max_steps=10)
    hub.progress(dict(HEALTHY, step=10))
    assert hub.close(pushgateway, "run-7") is None
    path, body = _Pushgateway.received[-1]
    assert path == "/metrics/job/gan-dist/run/run-7"
    assert "gan_train_step 10.0" in body
    unreachable = RunHub(max_steps=10).close("http://127.0.0.1:9", "run-7")
    assert "could not push metrics" in unreachable


# Policies in real runs -------------------------------------------------------------------
# G barely learns (lr_g 1e-7), so it covers no mode of ring8: a collapse by construction,
# seen from the first counted interval on.

COLLAPSING = {"model.hidden": 32, "data.batch_size": 128, "train.log_every": 50, "checkpoint.every": 100,
              "train.sample_every": 10_000, "optim.lr_g": 1e-7, "monitor.warmup_steps": 200, "metrics.port": 0}


def _train(storage: Path, name: str, steps: int, **overrides) -> tuple[int, dict]:
    sets = {**COLLAPSING, **{k.replace("__", "."): v for k, v in overrides.items()}}
    argv = ["train", "--no-ray", "--storage", str(storage), "--name", name, "--max-steps", str(steps)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    code = main(argv)
    return code, yaml.safe_load((storage / name / "summary.json").read_text())


def test_rollback_restores_a_checkpoint_from_before_the_onset_and_stops_when_retries_run_out(tmp_path, cache_dir):
    code, summary = _train(tmp_path, "rb", 1000, monitor__collapse="rollback", monitor__max_rollbacks=2,
                           monitor__d_overpower="off")
    assert code == 1 and summary["status"] == "stopped"
    assert "stopped by the mode_collapse detector" in summary["reason"]
    assert summary["rollbacks"] == 2
    actions = [(a["kind"], a["action"], a["rollbacks"]) for a in summary["alerts"]]
    assert actions == [("mode_collapse", "rollback", 0), ("mode_collapse", "rollback", 1),
                       ("mode_collapse", "stop", 2)]
    onset = summary["alerts"][0]["onset_step"]
    # Each rollback went back to a checkpoint from before the onset, set the abandoned ones aside,
    # and the run resumed from there with halved learning rates.
    run = tmp_path / "rb"
    abandoned = sorted(p.name for p in run.iterdir() if p.name.startswith("abandoned-"))
    assert abandoned and all(int(name.rsplit("-", 1)[1]) >= onset for name in abandoned)
    state = ckpt.load_shared(ckpt.find_latest(run))
    assert state["lr_scale"] == 0.25 and state["monitor"]["rollbacks"] == 2
    assert summary["steps"] == summary["alerts"][-1]["step"]  # saved where it stopped


def test_warn_policy_records_alerts_and_monitoring_off_records_nothing(tmp_path, cache_dir):
    code, summary = _train(tmp_path, "warn", 500)
    assert code == 0 and summary["status"] == "completed"
    kinds = {a["kind"] for a in summary["alerts"]}
    assert "mode_collapse" in kinds and all(a["action"] == "warn" for a in summary["alerts"])
    assert summary["final"]["collapse_score"] == 1.0 and summary["final"]["alert_mode_collapse"] == 1.0
    assert (tmp_path / "warn" / TARGETS_FILE).exists()
    code, summary = _train(tmp_path, "off", 500, metrics__enabled="false")
    assert code == 0 and summary["alerts"] == []
    assert "collapse_score" not in summary["final"] and not (tmp_path / "off" / TARGETS_FILE).exists()


TIMINGS = {"time", "samples_per_second", "data_wait_fraction", "data_wait_seconds",
           "checkpoint_blocked_seconds", "checkpoint_write_seconds"}


def test_rows_read_one_step_late_match_and_still_act(tmp_path, cache_dir, monkeypatch):
    """On a GPU a log interval's row is read one step later, so the host never waits for the
    stream (`perf.async_stats`). Forced on here: the rows and the weights are the same as when
    read at once, and the detectors still act (from the row's step; a stop saves one step on)."""
    code, sync = _train(tmp_path, "sync", 300)
    monkeypatch.setattr(loop, "reads_stats_late", lambda cfg, device: True)
    read_at, finish_log = [], Worker.finish_log

    def spy(worker, row):
        read_at.append((row.host["step"], worker.st.step))
        return finish_log(worker, row)
    monkeypatch.setattr(Worker, "finish_log", spy)
    code_late, late = _train(tmp_path, "late", 300)
    # Rows at a checkpoint (every 100 steps) and at the end are read at once, the others late.
    assert read_at == [(50, 51), (100, 100), (150, 151), (200, 200), (250, 251), (300, 300)]
    assert code == code_late == 0 and late["fingerprint"] == sync["fingerprint"]
    rows = [pq.read_table(tmp_path / name / "history.parquet").to_pylist() for name in ("sync", "late")]
    strip = [[{k: v for k, v in r.items() if k not in TIMINGS} for r in rs] for rs in rows]
    assert len(strip[0]) == 300 // 50 and strip[0] == strip[1]
    assert [(a["kind"], a["step"]) for a in late["alerts"]] == [(a["kind"], a["step"]) for a in sync["alerts"]]

    code, summary = _train(tmp_path, "rb", 1000, monitor__collapse="rollback", monitor__max_rollbacks=1,
                           monitor__d_overpower="off")
    assert code == 1 and summary["rollbacks"] == 1
    assert [a["action"] for a in summary["alerts"]] == ["rollback", "stop"]
    assert summary["steps"] in (summary["alerts"][-1]["step"], summary["alerts"][-1]["step"] + 1)


def test_bad_monitor_config_is_one_line_exit_2(cli):
    r = cli("train", "--dry-run", "--set", "monitor.collapse=panic")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "monitor.collapse must be one of off, warn, rollback, stop" in r.stderr
    r = cli("train", "--dry-run", "--set", "metrics.pushgateway=localhost:9091")
    assert r.returncode == 2 and "metrics.pushgateway must be an http(s):// URL" in r.stderr


def test_detection_benchmark_ground_truth_is_the_failure_the_run_ends_in():
    from gan_dist.bench.detect import ground_truth_onset

    def series(quality):
        return [{"step": 500 * (i + 1), "mode_coverage_ratio": 1.0, "high_quality_fraction": q}
                for i, q in enumerate(quality)]

    slow_start = series([0.0, 0.0, 0.0, 0.0, 0.5, 0.8, 0.9])  # bad early, then fine: not a failure
    assert ground_truth_onset(slow_start, warmup=1000) is None
    collapsed = series([0.9, 0.9, 0.9, 0.0, 0.9, 0.0, 0.0, 0.0])  # ends in a streak from step 3000
    assert ground_truth_onset(collapsed, warmup=1000) == 3000
    assert ground_truth_onset(series([0.9, 0.9, 0.9, 0.9, 0.0, 0.0]), warmup=1000) is None  # too short a streak
    # Images: the quality is the recall of the periodic eval; class coverage alone fails a row too.
    images = [{"step": 500 * (i + 1), "mode_coverage_ratio": c, "recall": r}
              for i, (c, r) in enumerate([(1.0, 0.5), (1.0, 0.4), (1.0, 0.02), (0.3, 0.3), (1.0, 0.01), (1.0, 0.0)])]
    assert ground_truth_onset(images, warmup=1000) == 1500
    # An interval between two evals (recall null or NaN, as a history row has it) keeps the last
    # eval's recall: here the failure from step 1250 on.
    sparse = [{"step": 250 * (i + 1), "mode_coverage_ratio": 1.0, "recall": r}
              for i, r in enumerate([0.5, None, 0.4, float("nan"), 0.02, None, 0.0, None])]
    assert ground_truth_onset(sparse, warmup=1000) == 1250
    assert ground_truth_onset(sparse[:5] + [{**row, "recall": 0.3} for row in sparse[5:]], warmup=1000) is None


def test_a_run_without_ray_serves_metrics_on_loopback_even_with_ray_address_set(tmp_path, cache_dir, monkeypatch):
    """RAY_ADDRESS exported (as a cluster rehearsal does) must not open a --no-ray run's metrics
    to every interface: only a run that joins a cluster binds all of them."""
    from conftest import run_cli_listening

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    result, listening = run_cli_listening("train", "--no-ray", "--storage", str(tmp_path), "--name", "lo",
                                          "--max-steps", "300", "--set", "model.hidden=32",
                                          "--set", "train.log_every=50", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    target = json.loads((tmp_path / "lo" / TARGETS_FILE).read_text())[0]["targets"][0]
    port = int(target.rpartition(":")[2])
    assert target.startswith("127.0.0.1:") and {(a, p) for a, p, _ in listening if p == port} == {("127.0.0.1", port)}
