"""Every hostile or careless input, one row each: the command, its exit code (2: bad input),
the one line it prints, and nothing written. The home for every bad-input case of the
project: add a row here when a new one is found.

Rows run `gan-dist` in this process (main(argv)): an exception escaping main is a
traceback a user would see, and fails the row. `{tmp}` in a row stands for the row's own
empty folder, which is also the working directory; the check that nothing was written
compares that folder's listing before and after (inputs a row needs are written first, by
its `setup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from gan_dist.cli import main

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    expect: str  # a part of the one error line
    code: int = 2
    setup: Callable[[Path], None] | None = None


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


TRAIN = ("train", "--storage", "{tmp}/runs", "--name", "r")

CASES: dict[str, Case] = {
    # 0 is not "not given": every count a user types is checked (issue 16, item 7).
    "workers 0": Case(("train", "ring8", "--workers", "0"), "--workers: must be >= 1, got 0"),
    "workers negative": Case(("train", "--workers", "-2"), "--workers: must be >= 1"),
    "workers not a number": Case(("train", "--workers", "two"), "--workers: expected an integer"),
    "run.workers 0": Case((*TRAIN, "--set", "run.workers=0"), "run.workers must be a count >= 1 or auto"),
    "more workers than CPUs": Case((*TRAIN, "--workers", "64"), "CPUs"),
    "max-steps 0": Case(("train", "--max-steps", "0"), "--max-steps: must be >= 1, got 0"),
    "train.max_steps 0": Case((*TRAIN, "--set", "train.max_steps=0"), "train.max_steps must be > 0"),
    "gpus-per-worker negative": Case(("train", "--gpus-per-worker", "-1"), "--gpus-per-worker: must be a finite"),
    "cpus_per_worker 0": Case((*TRAIN, "--set", "run.cpus_per_worker=0"), "run.cpus_per_worker must be > 0"),
    "log_every 0": Case((*TRAIN, "--set", "train.log_every=0"), "train.log_every must be > 0"),
    "sample_every 0": Case((*TRAIN, "--set", "train.sample_every=0"), "train.sample_every must be > 0"),
    "checkpoint.every 0": Case((*TRAIN, "--set", "checkpoint.every=0"), "checkpoint.every must be > 0"),
    "checkpoint.keep 0": Case((*TRAIN, "--set", "checkpoint.keep=0"), "checkpoint.keep must be > 0"),
    "batch_size 0": Case((*TRAIN, "--set", "data.batch_size=0"), "data.batch_size must be > 0"),
    "batch not divisible": Case((*TRAIN, "--set", "data.batch_size=511"), "does not divide"),
    "shuffle_window 0": Case((*TRAIN, "--set", "data.shuffle_window=0"), "data.shuffle_window must be > 0"),
    "z_dim 0": Case((*TRAIN, "--set", "model.z_dim=0"), "model.z_dim must be > 0"),
    "n_critic 0": Case((*TRAIN, "--set", "schedule.n_critic=0"), "schedule.n_critic must be >= 1"),
    "r1_interval 0": Case((*TRAIN, "--set", "loss.r1_interval=0"), "loss.r1_interval must be >= 1"),
    "eval.num_samples 0": Case((*TRAIN, "--set", "eval.num_samples=0"), "eval.num_samples must be > 0"),
    "monitor.patience 0": Case((*TRAIN, "--set", "monitor.patience=0"), "monitor.patience must be >= 1"),
    "metrics.port too big": Case((*TRAIN, "--set", "metrics.port=70000"), "metrics.port must be in [0, 65535]"),
    "sample --n 0": Case(("sample", "{tmp}/none", "--n", "0", "--out", "{tmp}/x.png"), "--n: must be >= 1"),
    # Numbers that are not numbers.
    "lr inf": Case((*TRAIN, "--set", "optim.lr_g=inf"), "optim.lr_g must be a finite number"),
    "gp nan": Case((*TRAIN, "--set", "loss.gp_weight=.nan"), "loss.gp_weight must be a finite number"),
    "seed beyond 2**32": Case((*TRAIN, "--set", "seed=18446744073709551616"), "seed must be in [0, 2**32)"),
    "seed negative": Case((*TRAIN, "--set", "seed=-1"), "seed must be in [0, 2**32)"),
    # Config keys and recipes.
    "unknown recipe": Case((*TRAIN[:1], "missing-recipe", *TRAIN[1:]), "unknown recipe"),
    "negative lr": Case((*TRAIN, "--set", "optim.lr_g=-0.1"), "optim.lr_g"),
    "misspelt key": Case((*TRAIN, "--set", "model.widht=3"), "unknown config key model.widht"),
    "set without =": Case((*TRAIN, "--set", "noequals"), "key=value"),
    "malformed YAML": Case(("train", "{tmp}/broken.yaml", "--storage", "{tmp}/runs"), "not valid YAML",
                           setup=write("broken.yaml", "seed: 1\nmodel: [unclosed\n")),
    "missing data folder": Case((*TRAIN, "--set", "data.source=/no/such/folder"), "/no/such/folder"),
    "unknown builtin": Case((*TRAIN, "--set", "data.source=builtin:imagenet"), "imagenet"),
    # Where the run directory goes (issue 17, item 1): the name actually used is checked.
    "recipe escapes storage": Case(("train", "--set", "recipe=/tmp/x", "--storage", "{tmp}/runs"),
                                   "the run name made from recipe"),
    "recipe file escapes storage": Case(("train", "{tmp}/evil.yaml", "--storage", "{tmp}/runs"),
                                        "the run name made from recipe",
                                        setup=write("evil.yaml", "recipe: ../../../../tmp/x\n")),
    "name with ..": Case(("train", "--name", "a..b", "--storage", "{tmp}/runs"), "run.name must be"),
    "name of 300 characters": Case(("train", "--name", "n" * 300, "--storage", "{tmp}/runs"), "run.name must be"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys, cache_dir):
    if case.setup is not None:
        case.setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in case.argv])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == case.code, out.err
    assert len(lines) == 1 and case.expect in lines[0], out.err
    assert "Traceback" not in out.err + out.out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "bad input wrote something"
