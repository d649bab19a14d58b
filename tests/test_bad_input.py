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
    expect: str  # a part of the one error line ({tmp} as in argv)
    code: int = 2
    setup: Callable[[Path], None] | None = None


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    if isinstance(text, bytes):
        return lambda tmp: (tmp / name).write_bytes(text)
    return lambda tmp: (tmp / name).write_text(text)


def billion_laughs() -> str:
    """The classic alias bomb: 9 levels of 9 aliases, 9**9 strings once expanded, in 400 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("seed: [" + ",".join(["*h"] * 9) + "]")
    return "\n".join(lines) + "\n"


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
    # Memory from tiny inputs (issue 17, item 6): YAML aliases and nesting are bounded, and so are
    # model sizes (the plan counts weights on torch's meta device, allocating nothing).
    "billion laughs recipe": Case(("train", "{tmp}/lol.yaml", "--storage", "{tmp}/runs", "--dry-run"),
                                  "recipe {tmp}/lol.yaml expands to over 10,000 values",
                                  setup=write("lol.yaml", billion_laughs())),
    "billion laughs in --set": Case((*TRAIN, "--set", "seed=[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&{b} [" + ",".join([f"*{a}"] * 10) + "]" for a, b in zip("abcd", "bcde")) + "]"),
        "--set seed expands to over 10,000 values"),
    "recipe nesting 20000 deep": Case(("train", "{tmp}/deep.yaml", "--storage", "{tmp}/runs"),
                                      "nests deeper than 32 levels",
                                      setup=write("deep.yaml", "seed: " + "[" * 20000 + "]" * 20000 + "\n")),
    "recipe containing itself": Case(("train", "{tmp}/loop.yaml", "--storage", "{tmp}/runs"),
                                     "contains itself through an alias", setup=write("loop.yaml", "seed: &s [*s]\n")),
    "model.depth 100000000": Case((*TRAIN, "--dry-run", "--set", "model.depth=100000000"),
                                  "model.depth must be <= 1,000, got 100,000,000"),
    "model.hidden 1e12": Case((*TRAIN, "--dry-run", "--set", "model.hidden=1e12"), "model.hidden must be int"),
    "model.hidden 10**12": Case((*TRAIN, "--dry-run", "--set", "model.hidden=1000000000000"),
                                "model.hidden must be <= 65,536"),
    "model of 4e12 weights": Case((*TRAIN, "--dry-run", "--set", "model.hidden=65536", "--set", "model.depth=1000"),
                                  "G of model.arch mlp would have 4,290,754,772,994 weights, over the"),
    "conv model of 4e10 weights": Case((*TRAIN, "--dry-run", "--set", "model.arch=dcgan", "--set",
                                        "data.source=builtin:digits", "--set", "model.channels=16384"),
                                       "G of model.arch dcgan would have 43,218,599,936 weights"),
    # Tracebacks instead of one line (item 7) and misleading messages (the minor items).
    "recipe with int and str keys": Case(("train", "{tmp}/mixed.yaml", "--storage", "{tmp}/runs"),
                                         "config has the key 1 (int): config keys are names",
                                         setup=write("mixed.yaml", "1: 2\nfoo: 3\nseed: 4\n")),
    "section with int and str keys": Case(("train", "{tmp}/mixed.yaml", "--storage", "{tmp}/runs"),
                                          "model has the key 7 (int)",
                                          setup=write("mixed.yaml", "model:\n  7: a\n  depth: 2\n")),
    "binary recipe file": Case(("train", "{tmp}/bin.yaml", "--storage", "{tmp}/runs"),
                               "recipe file {tmp}/bin.yaml is not a text file",
                               setup=write("bin.yaml", bytes(range(128, 256)) * 3)),
    # Object storage for run directories (item 12): refused, with what to do instead.
    "storage s3://": Case(("train", "--storage", "s3://bucket/runs", "--no-ray", "--max-steps", "1"),
                          "run.storage must be a folder path, got the URI 's3://bucket/runs'"),
    "storage file://": Case(("train", "--storage", "file://{tmp}/runs", "--dry-run"),
                            "mount object storage"),
    "submit storage gs://": Case(("submit", "--address", "http://127.0.0.1:8265", "--storage", "gs://b/runs",
                                  "--name", "r", "--dry-run"), "run.storage must be a folder path"),
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
    assert len(lines) == 1 and case.expect.replace("{tmp}", str(tmp_path)) in lines[0], out.err
    assert "Traceback" not in out.err + out.out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "bad input wrote something"
