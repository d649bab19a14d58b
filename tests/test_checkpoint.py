"""Checkpoints: complete or ignored, verified on load, never executing code."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.trainer import preempt

pytestmark = pytest.mark.unit

PAYLOAD_MARK = "gan-dist-pwned"


class Evil:
    def __reduce__(self):
        return (subprocess.call, (["touch", PAYLOAD_MARK],))


def write_fake_checkpoint(folder: Path, step: int, payload: bytes | None = None) -> None:
    files = {"state.pt": payload if payload is not None else ckpt.to_bytes({"step": step}),
             "config.yaml": b"seed: 0\n", "rank-00000.pt": ckpt.to_bytes({"rng": {}})}
    ckpt.write_rank_files(folder, 0, 1, step, files)


def test_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "step-000010"
    write_fake_checkpoint(folder, 10, payload=pickle.dumps({"G": Evil()}))
    ckpt.verify(folder)  # checksums are fine: the file is what was written
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_shared(folder)
    assert not (tmp_path / PAYLOAD_MARK).exists()


def test_newest_truncated_checkpoint_falls_back_to_previous(tmp_path):
    write_fake_checkpoint(tmp_path / "step-000010", 10)
    write_fake_checkpoint(tmp_path / "step-000020", 20)
    assert ckpt.find_latest(tmp_path).name == "step-000020"
    state = tmp_path / "step-000020" / "state.pt"
    state.write_bytes(state.read_bytes()[:10])
    with pytest.warns(UserWarning, match="checksum"):
        assert ckpt.find_latest(tmp_path).name == "step-000010"


def test_incomplete_checkpoint_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "step-000030"
    write_fake_checkpoint(folder, 30)
    (folder / "manifest-00000.json").unlink()
    with pytest.warns(UserWarning, match="incomplete"):
        assert ckpt.find_latest(tmp_path) is None


TRAIN_DEFAULTS = {"model.hidden": 32, "data.batch_size": 64, "train.log_every": 10,
                  "checkpoint.every": 20, "train.sample_every": 1000}


def _train(storage: Path, name: str, steps: int, **overrides) -> dict:
    """A short in-process run (keys with '__' for '.'); returns its summary."""
    sets = {**TRAIN_DEFAULTS, **{k.replace("__", "."): v for k, v in overrides.items()}}
    argv = ["train", "--no-ray", "--storage", str(storage), "--name", name, "--max-steps", str(steps)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    return yaml.safe_load((storage / name / "summary.json").read_text())


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, cache_dir):
    reference = _train(tmp_path, "straight", 60)
    first = _train(tmp_path, "resumed", 40)
    assert first["steps"] == 40
    resumed = _train(tmp_path, "resumed", 60)  # the same name: resumes from step 40
    assert resumed["steps"] == 60 and resumed["status"] == "completed"
    assert resumed["fingerprint"] == reference["fingerprint"]
    assert resumed["data"]["samples_seen"] == reference["data"]["samples_seen"]
    steps = pq.read_table(tmp_path / "resumed" / "history.parquet").column("step").to_pylist()
    assert steps == list(range(10, 61, 10))  # history continues without gaps or repeats
    # The resolved config is stored in every checkpoint (the last two are kept) and in the run directory.
    folders = ckpt.step_dirs(tmp_path / "resumed")
    assert [f.name for f in folders] == ["step-000060", "step-000040"]
    for folder in folders:
        assert yaml.safe_load((folder / "config.yaml").read_text())["run"]["name"] == "resumed"


def test_sigterm_stops_an_in_process_run_which_resumes_in_the_same_process(tmp_path, cache_dir):
    """Without Ray a SIGTERM saves and stops the run; the flag does not outlive the run (the
    next run in the process resumes and completes), nor does the handler."""
    reference = _train(tmp_path, "straight", 400)
    before = signal.getsignal(signal.SIGTERM)

    def kill_after_first_checkpoint():
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "term" / "step-000020").is_dir():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    argv = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "term", "--max-steps", "400"]
    for key, value in TRAIN_DEFAULTS.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 1
    killer.join()
    stopped = yaml.safe_load((tmp_path / "term" / "summary.json").read_text())
    assert stopped["status"] == "stopped" and "preempted" in stopped["reason"] and 20 <= stopped["steps"] < 400
    assert signal.getsignal(signal.SIGTERM) is before
    resumed = _train(tmp_path, "term", 400)
    assert resumed["status"] == "completed" and resumed["fingerprint"] == reference["fingerprint"]


def test_a_ray_driver_passes_one_sigterm_on_and_stops_at_a_second():
    asked = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preempt.StopNow):
        with preempt.sigterm_passed_on(asked.set):
            os.kill(os.getpid(), signal.SIGTERM)
            assert asked.wait(10)  # passed on, on a thread of its own; the run goes on
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here
    assert signal.getsignal(signal.SIGTERM) is before


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    scores = {10: 0.5, 20: 0.9, 30: 0.1, 40: 0.2, 50: 0.3}
    for step, score in scores.items():
        ckpt.write_rank_files(tmp_path / f"step-{step:06d}", 0, 1, step, {"state.pt": b"x"},
                              metrics={"high_quality_fraction": score})
    removed = ckpt.prune(tmp_path, keep_last=2, best_metric="high_quality_fraction", best_mode="max")
    assert sorted(p.name for p in removed) == ["step-000010", "step-000030"]
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step-000050", "step-000040", "step-000020"]
    ckpt.prune(tmp_path, keep_last=1, best_metric="high_quality_fraction", best_mode="min")
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step-000050", "step-000040"]
    ckpt.prune(tmp_path, keep_last=1)
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step-000050"]
    # The end of a phase (the SRResNet phase's, scored by bench.superres) stays
    for step in (60, 70):
        ckpt.write_rank_files(tmp_path / f"step-{step:06d}", 0, 1, step, {"state.pt": b"x"},
                              metrics={"phase_end": int(step == 60)})
    ckpt.prune(tmp_path, keep_last=1)
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step-000070", "step-000060"]


def test_time_based_checkpoints(tmp_path, cache_dir):
    _train(tmp_path, "timed", 50, model__hidden=16, data__batch_size=32, train__checkpoint_every=1000,
           train__checkpoint_every_minutes=0.000001, train__keep_checkpoints=10)
    assert [p.name for p in ckpt.step_dirs(tmp_path / "timed")] == [f"step-{s:06d}" for s in (50, 40, 30, 20, 10)]


def test_best_checkpoint_is_kept_by_its_eval_metric(tmp_path, cache_dir):
    _train(tmp_path, "best", 60, model__hidden=16, data__batch_size=32, train__checkpoint_every=10,
           train__keep_checkpoints=1, train__keep_best_metric="high_quality_fraction")
    # Each checkpoint's metrics are its step's history row: the best of all six is the newest
    # step with the highest high_quality_fraction, and it is kept beside the last one.
    rows = pq.read_table(tmp_path / "best" / "history.parquet").to_pylist()
    score = {row["step"]: row["high_quality_fraction"] for row in rows}
    assert sorted(score) == [10, 20, 30, 40, 50, 60]
    best = max(step for step, value in score.items() if value == max(score.values()))
    folders = ckpt.step_dirs(tmp_path / "best")
    assert [f.name for f in folders] == [f"step-{s:06d}" for s in sorted({60, best}, reverse=True)]
    for folder in folders:
        metrics = ckpt.verify(folder)["metrics"]
        assert metrics["high_quality_fraction"] == score[metrics["step"]] and "loss_d" in metrics
