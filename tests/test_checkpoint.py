"""Checkpoints: complete or ignored, verified on load, never executing code."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest
import yaml

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main

PAYLOAD_MARK = "gan-dist-pwned"


class Evil:
    def __reduce__(self):
        return (subprocess.call, (["touch", PAYLOAD_MARK],))


def write_fake_checkpoint(folder: Path, step: int, payload: bytes | None = None) -> None:
    files = {"state.pt": payload if payload is not None else ckpt.to_bytes({"step": step}),
             "rank-00000.pt": ckpt.to_bytes({"rng": {}})}
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


def _train(storage: Path, name: str, steps: int) -> dict:
    argv = ["train", "--no-ray", "--storage", str(storage), "--name", name, "--max-steps", str(steps),
            "--set", "model.hidden=32", "--set", "data.batch_size=64", "--set", "train.log_every=10",
            "--set", "train.checkpoint_every=20", "--set", "train.sample_every=1000"]
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
    import pyarrow.parquet as pq

    steps = pq.read_table(tmp_path / "resumed" / "history.parquet").column("step").to_pylist()
    assert steps == list(range(10, 61, 10))  # history continues without gaps or repeats
    # The resolved config is stored in every checkpoint and in the run directory.
    for folder in ckpt.step_dirs(tmp_path / "resumed"):
        assert yaml.safe_load((folder / "config.yaml").read_text())["run"]["name"] == "resumed"
