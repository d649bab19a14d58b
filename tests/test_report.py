"""`gan-dist report`: the page of a completed run with periodic FID opened in a real headless
Chromium (its screenshot kept in the run directory as report.png, every image loaded, the key
elements there), and the pages of a run still going, of a failed run and of a run that rolled
back and stopped. The periodic evals' FID, KID, precision and recall in the page's plots and
in the run's TensorBoard log (`quality/`), and a conditional run's grids, which name each
row's class, in both."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import base64
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO
from gan_dist.cli import main
from gan_dist.report import MAX_STRIP
from gan_dist.trainer import loop
from test_tensorboard import Events

# The flags the brief for this test names: no sandbox (root in a container), nothing fetched
# from the network, a fresh profile each time.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
SCREEN = (1280, 3200)


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make tools` (tests/tools/ensure-tools.sh) installs it"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                          text=True, timeout=180)


def page_of(run: Path, *extra: str) -> str:
    assert main(["report", str(run), *extra]) == 0
    return (run / "report.html").read_text()


@pytest.fixture(scope="module")
def evals_run(tmp_path_factory, cache_dir) -> Path:
    """40 steps of dcgan-digits: grids every 10 steps, an Inception eval (16 samples) every 20."""
    storage = tmp_path_factory.mktemp("runs")
    assert main(["train", "dcgan-digits", "--no-ray", "--max-steps", "40", "--storage", str(storage), "--name", "f",
                 "--set", "train.log_every=10", "--set", "checkpoint.every=20", "--set", "train.sample_every=10",
                 "--set", "metrics.port=0", "--set", "monitor.class_coverage=false", "--set", "eval.num_samples=64",
                 "--set", "eval.every_steps=20", "--set", "eval.every_n=16"]) == 0
    return storage / "f"


@pytest.mark.integration
@pytest.mark.slow  # two Inception evals in the run: about 20-40 s here
def test_the_report_renders_in_a_real_browser(evals_run, tmp_path, capsys):
    """Chromium loads the page from a file with the network shut off: every image has loaded
    with a natural size (the page's own script says so in --dump-dom), the summary, the
    plots (FID among them), the strip of grids and the alerts are there, and the screenshot
    shows the plots drawn."""
    assert main(["report", str(evals_run)]) == 0
    assert f"wrote {evals_run / 'report.html'}" in capsys.readouterr().out
    url = (evals_run / "report.html").as_uri()
    shot = evals_run / "report.png"  # kept beside the run: CI's evidence of what the page looked like
    result = chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}", f"--window-size={SCREEN[0]},{SCREEN[1]}")
    assert shot.is_file(), result.stderr[-2000:]
    dom = chromium(url, tmp_path / "profile-dom", "--dump-dom").stdout

    body = re.search(r"<body[^>]*>", dom).group(0)
    loaded, total = map(int, re.search(r'data-images-loaded="(\d+)/(\d+)"', body).groups())
    assert 'data-rendered="yes"' in body and loaded == total == dom.count("<img "), body
    plots = re.findall(r'id="plot-([a-z_]+)"', dom)
    assert {"losses", "d_accuracy", "gradients", "collapse", "throughput", "fid",
            "precision_recall"} <= set(plots), plots
    assert re.findall(r"<figcaption>step ([\d,]+)</figcaption>", dom) == ["10", "20", "30", "40"]
    assert total == len(plots) + 4
    assert "<th>status</th><td>completed</td>" in dom and "<th>steps</th><td>40 of 40</td>" in dom
    assert 'id="alerts"' in dom and "No detector fired." in dom and "fid_domain" in dom

    image = Image.open(shot)
    assert image.size == SCREEN
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    blue = np.abs(pixels - (31, 119, 180)).sum(axis=1) < 40  # matplotlib's first colour: the plotted lines
    assert blue.sum() > 500, "no plot drawn in the screenshot"


@pytest.mark.integration
@pytest.mark.slow  # the run of the browser test, with its two Inception evals
def test_the_periodic_evals_are_in_tensorboard_and_in_the_reports_plots(evals_run, capsys):
    """FID, KID, precision, recall and n of the evals at steps 20 and 40: the same values as
    history.parquet under TensorBoard's quality/ group, and a plot of each pair on the page
    whose title names n."""
    rows = [r for r in pq.read_table(evals_run / "history.parquet").to_pylist() if r.get("fid") is not None]
    assert [r["step"] for r in rows] == [20, 40] and all(r["eval_n"] == 16 for r in rows)
    events = Events(evals_run / "tb")
    for field in ("fid", "kid", "kid_std", "precision", "recall", "eval_n", "eval_seconds"):
        scalars = events.scalars(f"quality/{field}")
        assert [s for s, _ in scalars] == [20, 40], field
        assert [v for _, v in scalars] == pytest.approx([r[field] for r in rows], rel=1e-6), field
    page = page_of(evals_run)
    assert 'alt="FID of G_ema (periodic evals), 16 samples a side"' in page
    assert 'alt="Precision and recall of G_ema (periodic evals), 16 samples a side"' in page


def inlined_images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.mark.unit
def test_a_conditional_runs_grids_name_each_rows_class_in_the_report_and_in_tensorboard(tmp_path, cache_dir,
                                                                                         capsys):
    """The report and the TensorBoard log carry the grids that the run wrote, byte for byte:
    a row per class with its label band and the gan-dist:rows text chunk; the page's strip and
    TensorBoard's image description name the classes too."""
    assert main(["train", "cgan-digits", "--no-ray", "--max-steps", "4", "--storage", str(tmp_path), "--name", "c",
                 "--set", "train.log_every=2", "--set", "train.sample_every=2", "--set", "metrics.port=0",
                 "--set", "monitor.class_coverage=false", "--set", "eval.num_samples=32"]) == 0
    run = tmp_path / "c"
    grids = [(run / "samples" / f"step-00000{s}.png").read_bytes() for s in (2, 4)]
    classes = [f"{k} {k}" for k in range(10)]
    for png in grids:
        assert Image.open(io.BytesIO(png)).text["gan-dist:rows"].split(" | ") == classes

    page = page_of(run)
    assert [png for png in inlined_images(page) if png in grids] == grids  # the strip: the run's PNGs as they are
    assert 'alt="cgan-digits: G_ema at step 4; rows, one class each: 0 0 | 1 1 |' in page
    assert "Rows, one class each, from the top: 0 0, 1 1, 2 2," in page

    events = Events(run / "tb")
    assert [e.step for e in events.acc.Tensors("samples")] == [2, 4]
    assert [e.tensor_proto.string_val[2] for e in events.acc.Tensors("samples")] == grids
    description = events.acc.SummaryMetadata("samples").summary_description
    assert "cgan-digits" in description and "0 0 | 1 1 | 2 2" in description


@pytest.mark.unit
def test_a_run_still_going_gets_a_page_from_what_it_has_written(tmp_path, cache_dir, capsys):
    """A run in another process, once its first checkpoint has written history.parquet: the page
    has its plots and grids, and says that there is no summary yet."""
    argv = ["train", "--no-ray", "--max-steps", "1000000", "--storage", str(tmp_path), "--name", "live",
            "--set", "train.log_every=10", "--set", "checkpoint.every=50", "--set", "train.sample_every=25",
            "--set", "metrics.port=0"]
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    run = tmp_path / "live"
    try:
        deadline = time.monotonic() + 600  # a bound for a loaded machine, not a timing
        while not (run / "history.parquet").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert (run / "history.parquet").exists(), "no checkpoint within 600 s"
        page = page_of(run)
        assert not (run / "summary.json").exists()  # still going
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a preemption: it saves and stops
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
    assert "running, or ended without a summary (no summary.json yet)" in page
    assert 'id="plot-losses"' in page and "<figcaption>step 25</figcaption>" in page


def failing_at(step: int):
    """The real training step until `step`, then a bug."""
    real_step = loop.train_step

    def train_step(st, *args):
        if st.step >= step:
            raise RuntimeError(f"a bug at step {st.step}")
        return real_step(st, *args)
    return train_step


@pytest.mark.unit
def test_a_failed_run_gets_a_page_with_its_error_and_history(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(loop, "train_step", failing_at(45))
    assert main(["train", "--no-ray", "--max-steps", "100", "--storage", str(tmp_path), "--name", "bad",
                 "--set", "train.log_every=10", "--set", "checkpoint.every=20", "--set", "metrics.port=0"]) == 1
    page = page_of(tmp_path / "bad")
    assert "<th>status</th><td>failed</td>" in page
    assert "<th>error</th><td>RuntimeError: a bug at step 45</td>" in page
    assert "error.log (its last lines)" in page and "RuntimeError: a bug at step 45</pre>" in page
    assert "steps 10 to 40" in page and 'id="plot-losses"' in page  # the history of its last checkpoint


@pytest.mark.unit
def test_a_run_that_rolled_back_and_stopped_lists_its_alerts_and_marks_them(tmp_path, cache_dir, capsys):
    assert main(["train", "--no-ray", "--max-steps", "1000", "--storage", str(tmp_path), "--name", "rb",
                 "--set", "model.hidden=32", "--set", "data.batch_size=128", "--set", "train.log_every=50",
                 "--set", "checkpoint.every=100", "--set", "optim.lr_g=1e-7", "--set", "monitor.warmup_steps=200",
                 "--set", "metrics.port=0", "--set", "monitor.d_overpower=off", "--set", "monitor.collapse=rollback",
                 "--set", "monitor.max_rollbacks=1"]) == 1
    run = tmp_path / "rb"
    [rollback, stop] = json.loads((run / "summary.json").read_text())["alerts"]
    page = page_of(run)
    assert "<th>status</th><td>stopped</td>" in page and "<th>rollbacks</th><td>1</td>" in page
    rows = re.findall(r"<tr>((?:<td>[^<]*</td>)+)</tr>", page.split('id="alerts"')[1])
    cells = [re.findall(r"<td>([^<]*)</td>", r)[:5] for r in rows]
    assert cells == [[str(rollback["step"]), "mode_collapse", str(rollback["onset_step"]), "rollback",
                      str(rollback["to_step"])], [str(stop["step"]), "mode_collapse", str(stop["onset_step"]),
                                                  "stop", ""]]
    assert 'id="plot-collapse"' in page
    # The page holds every grid of the run, up to MAX_STRIP of them.
    assert page.count('<figure class="sample">') == min(MAX_STRIP, len(list((run / "samples").glob("*.png"))))
