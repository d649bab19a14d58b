"""A failure at run time keeps its evidence: the full traceback in <run>/error.log, one line
on the console that names it (and the traceback on stderr too with --verbose), exit 1, and
summary.json with status failed."""

from __future__ import annotations

import json

import pytest

from gan_dist.cli import main
from gan_dist.trainer import loop

pytestmark = pytest.mark.unit


def broken_step(*args, **kwargs):
    raise ZeroDivisionError("a bug deep in the step")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failed_run_writes_its_traceback_to_error_log(tmp_path, monkeypatch, capsys, cache_dir, verbose):
    monkeypatch.setattr(loop, "train_step", broken_step)
    argv = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "r", "--max-steps", "5",
            "--set", "metrics.port=0", *(["--verbose"] if verbose else [])]
    assert main(argv) == 1
    err = capsys.readouterr().err
    log = tmp_path / "r" / "error.log"
    assert f"run failed: ZeroDivisionError: a bug deep in the step (traceback in {log})" in err
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken_step" in text
    assert ("Traceback (most recent call last)" in err) == verbose
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error_log"] == str(log)
    assert summary["error"] == "ZeroDivisionError: a bug deep in the step"
