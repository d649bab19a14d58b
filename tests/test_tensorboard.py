"""The run's TensorBoard log (gan_dist/monitor/tensorboard.py): what goes in, grouped; curves
that continue across a restart and a rollback without duplicate or backwards steps; and a
real `tensorboard` server that shows a real run's scalars, images, text and hparams over
its HTTP API."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from gan_dist.cli import main
from gan_dist.monitor.hub import RunHub
from gan_dist.monitor.tensorboard import TensorBoardLog, scalar_tag
from gan_dist.visualize import image_grid_png


class Events:
    """A log as TensorBoard's Python loader reads it (what a restart's START drops is gone):
    every summary is a tensor there, scalars, images and text alike."""

    def __init__(self, log_dir: Path):
        self.acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
        self.acc.Reload()

    def tags(self, plugin: str) -> set[str]:
        return set(self.acc.PluginTagToContent(plugin))

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in self.acc.Tensors(tag)]

    def steps(self, tag: str) -> list[int]:
        return [e.step for e in self.acc.Tensors(tag)]

    def texts(self, tag: str) -> list[tuple[int, str]]:
        return [(e.step, e.tensor_proto.string_val[0].decode()) for e in self.acc.Tensors(tag)]


def grid(step: int) -> bytes:
    return image_grid_png(np.zeros((4, 1, 8, 8)), columns=2, caption=f"ring8: G_ema at step {step}",
                          text={"step": str(step)})


def row(step: int, branch: int) -> dict:
    return {"step": step, "time": time.time(), "loss_d": branch * 1000.0 + step, "d_acc_real": 0.5,
            "grad_norm_g": 1.0, "collapse_score": 0.1, "samples_per_second": 100.0, "alert_mode_collapse": 0.0,
            "r3_penalty": 0.2}


def event(step: int, action: str, rollbacks: int, to_step: int | None = None) -> dict:
    return {"step": step, "kind": "mode_collapse", "onset_step": step - 20, "action": action,
            "evidence": {"collapse_score": 0.9}, "note": "", "rollbacks": rollbacks, "to_step": to_step}


@pytest.mark.unit
def test_fields_are_grouped_by_concern():
    assert [scalar_tag(n) for n in ("loss_d", "d_acc_fake", "grad_norm_d", "collapse_score", "samples_per_second",
                                    "data_wait_fraction", "fid", "alert_divergence", "r3_penalty", "lr_g",
                                    "embed_dim", "mystery")] == [
        "loss/loss_d", "D/d_acc_fake", "gradients/grad_norm_d", "collapse/collapse_score",
        "throughput/samples_per_second", "throughput/data_wait_fraction", "quality/fid", "alerts/alert_divergence",
        "loss/r3_penalty", "schedule/lr_g", "other/embed_dim", "other/mystery"]


@pytest.mark.unit
def test_a_restart_and_a_rollback_continue_the_curves_without_duplicate_or_backwards_steps(tmp_path):
    """Session 1 logs to step 60 (checkpoint at 30) and dies; session 2 restarts from 30 and
    redoes 40-80, where a rollback restores step 50; the third branch goes on to 100. Every
    curve's steps rise strictly, each step holds the value of the branch that kept it, and
    the alert of a replayed step is there once."""
    log = TensorBoardLog(tmp_path, {"seed": 1, "model": {"arch": "mlp", "widths": [8, 8]}})
    log.session(0)
    for step in range(10, 70, 10):
        log.row(row(step, 1))
        if step == 40:
            log.alert(event(40, "warn", 0))
        if step % 20 == 0:
            log.samples(step, grid(step))
    log.session(30)  # a restart: the hub counts the replayed step-40 event once, so it never comes again
    for step in range(40, 90, 10):
        log.row(row(step, 2))
        if step % 20 == 0:
            log.samples(step, grid(step))
    log.alert(event(80, "warn", 0) | {"kind": "divergence"})
    log.alert(event(80, "rollback", 0, to_step=50))
    for step in range(60, 110, 10):
        log.row(row(step, 3))
    log.close()
    assert log.error is None and log.cpu_seconds > 0

    events = Events(tmp_path)
    assert events.scalars("loss/loss_d") == [(s, 1000 + s) for s in (10, 20, 30)] + [
        (s, 2000 + s) for s in (40, 50)] + [(s, 3000 + s) for s in range(60, 110, 10)]
    assert events.steps("samples") == [20, 40]  # the abandoned step-60 and -80 grids are gone
    assert {"D/d_acc_real", "gradients/grad_norm_g", "collapse/collapse_score", "throughput/samples_per_second",
            "alerts/alert_mode_collapse", "loss/r3_penalty"} <= events.tags("scalars")
    [(step, alert)] = events.texts("alerts/text_summary")  # written again after the restart, and once
    assert step == 40 and "| 40 | mode_collapse | 20 | warn |" in alert
    [(step, rollback)] = events.texts("rollbacks/text_summary")
    assert step == 51 and "Rollback 1** at step 80" in rollback and "checkpoint of step 50" in rollback
    assert "| 80 | divergence |" in rollback  # the event of an abandoned step, kept with the rollback
    [(step, config)] = events.texts("config/text_summary")
    assert step == 0 and "arch: mlp" in config
    assert "_hparams_/session_start_info" in events.tags("hparams")


@pytest.mark.unit
def test_the_hub_feeds_the_log_and_a_failing_disk_costs_a_warning_not_the_run(tmp_path, capsys):
    hub = RunHub(100, monitoring=False)
    hub.start_tensorboard(str(tmp_path / "tb"), {"seed": 0})
    hub.started(1, 0)
    hub.progress(row(10, 1))
    hub.samples(10, grid(10))
    hub.alert(event(10, "warn", 0))
    hub.alert(event(10, "warn", 0))  # replayed: counted once
    hub.close()
    events = Events(tmp_path / "tb")
    assert events.steps("loss/loss_d") == [10] and events.steps("samples") == [10]
    assert len(events.texts("alerts/text_summary")) == 1

    (tmp_path / "file").write_text("")
    broken = TensorBoardLog(tmp_path / "file" / "tb", {"seed": 0})  # a folder under a file: cannot be made
    broken.session(0)
    broken.row(row(10, 1))
    broken.close()
    assert broken.error and "the TensorBoard log under" in capsys.readouterr().err


# Real runs -------------------------------------------------------------------------------------

# A run made to collapse (as in test_monitor.py): G barely learns, so the collapse detector fires
# once its warm-up is over.
COLLAPSING = ["--set", "model.hidden=32", "--set", "data.batch_size=128", "--set", "train.log_every=50",
              "--set", "checkpoint.every=100", "--set", "optim.lr_g=1e-7", "--set", "monitor.warmup_steps=200",
              "--set", "metrics.port=0", "--set", "train.sample_every=100", "--set", "monitor.d_overpower=off"]


def history(run: Path) -> list[dict]:
    return pq.read_table(run / "history.parquet").to_pylist()


@pytest.mark.unit
def test_a_run_that_rolls_back_keeps_one_curve_the_history_of_the_branch_it_kept(tmp_path, cache_dir, capsys):
    argv = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "rb", "--max-steps", "1000", *COLLAPSING,
            "--set", "monitor.collapse=rollback", "--set", "monitor.max_rollbacks=1"]
    assert main(argv) == 1  # stopped by the detector once its one rollback was spent
    run = tmp_path / "rb"
    summary = json.loads((run / "summary.json").read_text())
    [rollback, stop] = summary["alerts"]
    assert rollback["action"] == "rollback" and stop["action"] == "stop"
    assert rollback["to_step"] < rollback["onset_step"] and stop["to_step"] is None
    events = Events(run / "tb")
    rows = history(run)
    assert events.steps("loss/loss_d") == [r["step"] for r in rows]  # rising: the abandoned steps are gone
    assert [v for _, v in events.scalars("loss/loss_d")] == pytest.approx([r["loss_d"] for r in rows], rel=1e-6)
    [(step, text)] = events.texts("rollbacks/text_summary")
    assert step == rollback["to_step"] + 1 and f"at step {rollback['step']}" in text
    assert [s for s, _ in events.texts("alerts/text_summary")] == [stop["step"]]
    assert events.steps("samples") == list(range(100, summary["steps"] + 1, 100))


def free_tensorboard(logdir: Path, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`tensorboard --logdir` on loopback, on a port of its choosing (read from its banner),
    in a process group of its own (it starts a data server beside it)."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(logdir),
                             "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    banner = ""
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        banner += line
        if found := re.search(r"at (http://127\.0\.0\.1:\d+)/", line):
            return proc, found.group(1)
    stop(proc)
    pytest.fail(f"tensorboard did not start within {timeout} s:\n{banner}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: tensorboard and its data server
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)
    proc.stdout.close()


def get(url: str, data: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
        return response.read()


def get_json(url: str, data: bytes | None = None):
    return json.loads(get(url, data))


@pytest.mark.integration
def test_a_real_tensorboard_shows_a_resumed_runs_scalars_images_text_and_hparams(tmp_path, cache_dir, capsys):
    """A 40-step run (checkpoints at 20 and 40) whose last checkpoint is lost, as if it died
    after logging step 40, resumes from step 20 and goes on to 60. `tensorboard --logdir
    STORAGE` then shows one value per step, the resumed session's for the steps it redid, equal
    to history.parquet; every sample grid once, as the PNG the run wrote; the config as text and
    as hparams."""
    common = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "r", "--set", "train.log_every=10",
              "--set", "checkpoint.every=20", "--set", "train.sample_every=10", "--set", "metrics.port=0"]
    assert main([*common, "--max-steps", "40"]) == 0
    shutil.rmtree(tmp_path / "r" / "step-000040")
    resumed_at = time.time()
    assert main([*common, "--max-steps", "60"]) == 0
    capsys.readouterr()
    rows = history(tmp_path / "r")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]

    proc, url = free_tensorboard(tmp_path)
    try:
        run = "r/tb"  # TensorBoard names a run by its folder under --logdir
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tags = get_json(f"{url}/data/plugin/scalars/tags").get(run, {})
            if "loss/loss_g" in tags and "samples" in get_json(f"{url}/data/plugin/images/tags").get(run, {}):
                break
            time.sleep(1)
        assert {"loss/loss_d", "loss/loss_g", "D/d_acc_real", "D/d_acc_fake", "gradients/grad_norm_d",
                "collapse/collapse_score", "throughput/samples_per_second", "throughput/data_wait_fraction",
                "alerts/rollbacks"} <= set(tags)
        query = urllib.parse.urlencode
        for field in ("loss_d", "loss_g", "d_acc_fake", "grad_norm_g"):
            points = get_json(f"{url}/data/plugin/scalars/scalars?{query({'run': run, 'tag': scalar_tag(field)})}")
            assert [step for _, step, _ in points] == [10, 20, 30, 40, 50, 60]
            assert [value for _, _, value in points] == pytest.approx([r[field] for r in rows], rel=1e-6)
            # Steps 30 and 40 are the resumed session's: the first session's were dropped.
            assert all(wall >= resumed_at for wall, step, _ in points if step > 20)

        # The card's description, from the grids' text chunks (rendered from Markdown to HTML).
        assert "(recipe ring8)" in get_json(f"{url}/data/plugin/images/tags")[run]["samples"]["description"]
        images = get_json(f"{url}/data/plugin/images/images?{query({'run': run, 'tag': 'samples'})}")
        assert [image["step"] for image in images] == [10, 20, 30, 40, 50, 60]
        last = get(f"{url}/data/plugin/images/individualImage?{images[-1]['query']}")
        assert last == (tmp_path / "r" / "samples" / "step-000060.png").read_bytes()
        assert Image.open(io.BytesIO(last)).text["gan-dist:caption"] == "ring8: G_ema at step 60"

        [config] = get_json(f"{url}/data/plugin/text/text?{query({'run': run, 'tag': 'config/text_summary'})}")
        assert config["step"] == 0 and "recipe: ring8" in config["text"]
        experiment = get_json(f"{url}/data/plugin/hparams/experiment", b'{"experimentName": ""}')
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"optim.lr_g", "loss.kind", "model.arch", "seed"} <= names
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"loss/loss_d", "collapse/collapse_score"}
    finally:
        stop(proc)
