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


def test_the_failure_line_names_the_lowest_failed_ranks_own_error():
    from ray.train.v2.api.exceptions import WorkerGroupError

    from gan_dist.results import failure_line

    wrapped = WorkerGroupError("rank 1 ...\nrank 0 ...", {1: KeyError("b"), 0: ValueError("bad shard\nmore")})
    assert failure_line(wrapped) == "rank 0: ValueError: bad shard"
    assert failure_line(RuntimeError("plain\nsecond")) == "RuntimeError: plain"


def test_ray_train_restarts_a_lost_worker_but_not_an_error_that_repeats():
    from ray.exceptions import ActorDiedError
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from gan_dist.checkpoint import CheckpointError
    from gan_dist.data.errors import DataError
    from gan_dist.integrations.ray import _FailurePolicy

    def decide(*errors):
        policy = _FailurePolicy(FailureConfig(max_failures=3))
        return policy.make_decision(WorkerGroupError("", dict(enumerate(errors))))

    assert decide(DataError("past data.max_corrupt_fraction")) == FailureDecision.RAISE
    assert decide(ValueError("n 10,000 > 9,216 crops"), ZeroDivisionError()) == FailureDecision.RAISE
    assert decide(ActorDiedError()) == FailureDecision.RETRY
    assert decide(ValueError("x"), RuntimeError("gloo: connection reset")) == FailureDecision.RETRY
    assert decide(CheckpointError("checksum")) == FailureDecision.RETRY
