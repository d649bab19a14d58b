"""Every hostile or careless input, one row each: the command, its exit code (2: bad input),
the one line it prints, and nothing written. The home for every bad-input case of the
project: add a row here when a new one is found.

Rows run `gan-dist` in this process (main(argv)): an exception escaping main is a
traceback a user would see, and fails the row. `{tmp}` in a row stands for the row's own
empty folder, which is also the working directory; the check that nothing was written
compares that folder's listing before and after (inputs a row needs are written first, by
its `setup`; a row with `run=True` starts with a copy of a short completed run at {tmp}/run,
which its setup may damage).

UNPRIVILEGED_CASES have the same format but run in a subprocess without root's powers to
pass mode bits and bind low ports (read-only folders, port 80). Cases that need a server, a
signal or a hang check (a SIGTERM to a run blocked on a stalled shard, a Ray dashboard that
never answers) and the cases whose outcome is not exit 2 (a resume that falls back, the
summary of a failed run) are tests of their own below the tables. The data plane's rows are
in tests/test_bad_input_data.py; the rules are in docs/bad-input.md.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from data_helpers import corrupt_image_dataset, random_images
from tune_helpers import make_tune
from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.data.pack import PackOptions, pack_images
from gan_dist.data.readers import array_source

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    expect: str  # a part of the one error line ({tmp} as in argv)
    code: int = 2
    setup: Callable[[Path], None] | None = None  # runs after the copy of the trained run, if any
    run: bool = False  # {tmp}/run starts as a copy of a short completed run (trained once: trained_run)
    env: tuple[tuple[str, str], ...] = ()  # environment variables ({tmp} as in argv)


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    if isinstance(text, bytes):
        return lambda tmp: (tmp / name).write_bytes(text)
    return lambda tmp: (tmp / name).write_text(text)


def hr_crops(size: int) -> Callable[[Path], None]:
    """A packed set of 8 random size x size RGB images at {tmp}/crops<size>."""
    def make(tmp: Path) -> None:
        out = tmp / f"crops{size}"
        out.mkdir()
        pixels, _ = random_images(8, size=size)
        pack_images(array_source("crops", "crops", pixels, None, [], shuffle=False, seed=0), out,
                    PackOptions(encode="png"))
    return make


def billion_laughs() -> str:
    """The classic alias bomb: 9 levels of 9 aliases, 9**9 strings once expanded, in 400 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("seed: [" + ",".join(["*h"] * 9) + "]")
    return "\n".join(lines) + "\n"


TRAIN = ("train", "--storage", "{tmp}/runs", "--name", "r")
TUNE = ("tune", "ring8", "--storage", "{tmp}/runs", "--name", "t", "--max-steps", "100", "--set", "train.log_every=10")

# The trained run's arguments ({tmp}/run): 4 steps, checkpoints at 2 and 4.
RUN = ("--no-ray", "--storage", "{tmp}", "--name", "run", "--set", "checkpoint.every=2", "--set", "train.log_every=2",
       "--set", "metrics.port=0")
CKPT = "{tmp}/run/step-000004"


def in_checkpoint(name: str, change: Callable[[bytes], bytes], step: int = 4) -> Callable[[Path], None]:
    """Rewrite file `name` of the trained run's checkpoint with `change`, and its checksum with
    it: the damage is inside a file that verifies, not a checksum mismatch."""
    def damage(tmp: Path) -> None:
        folder = tmp / "run" / ckpt.step_dir_name(step)
        data = change((folder / name).read_bytes() if (folder / name).exists() else b"")
        (folder / name).write_bytes(data)
        manifest = json.loads((folder / "manifest-00000.json").read_text())
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
        (folder / "manifest-00000.json").write_text(json.dumps(manifest))
    return damage


def state_without(*keys: str) -> Callable[[bytes], bytes]:
    return lambda data: ckpt.to_bytes({k: v for k, v in ckpt.from_bytes(data, "state").items() if k not in keys})


def meta_without(key: str) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        state = ckpt.from_bytes(data, "state")
        state["data_meta"] = {k: v for k, v in state["data_meta"].items() if k != key}
        return ckpt.to_bytes(state)
    return change


def manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Replace the newest checkpoint's rank-0 manifest by change(manifest)."""
    def damage(tmp: Path) -> None:
        path = tmp / "run" / "step-000004" / "manifest-00000.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def remove(*names: str) -> Callable[[Path], None]:
    def damage(tmp: Path) -> None:
        for name in names:
            path = tmp / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def steps(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda tmp: [change(tmp) for change in changes] and None


def truncate(name: str) -> Callable[[Path], None]:
    """Keep the first half of file `name`: a file cut short by a full disk or a lost copy."""
    def damage(tmp: Path) -> None:
        data = (tmp / name).read_bytes()
        (tmp / name).write_bytes(data[:len(data) // 2])
    return damage


def no_rows(tmp: Path) -> None:
    """The trained run's history.parquet with its columns and no row."""
    path = tmp / "run" / "history.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)

def tune(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    """{tmp}/pbt, a tune of two members that are copies of the trained run (tests/tune_helpers.py),
    then `changes` to it."""
    def make(tmp: Path) -> None:
        make_tune(tmp, tmp / "run")
        for change in changes:
            change(tmp)
    return make


def insert_line(name: str, line: str, at: int) -> Callable[[Path], None]:
    def damage(tmp: Path) -> None:
        lines = (tmp / name).read_text().splitlines(keepends=True)
        (tmp / name).write_text("".join(lines[:at] + [line + "\n"] + lines[at:]))
    return damage


CASES: dict[str, Case] = {
    # 0 is not "not given": every count a user types is checked (issue 16, item 7).
    "workers 0": Case(("train", "ring8", "--workers", "0"), "--workers: must be >= 1, got 0"),
    "workers negative": Case(("train", "--workers", "-2"), "--workers: must be >= 1"),
    "workers not a number": Case(("train", "--workers", "two"), "--workers: expected an integer"),
    "run.workers 0": Case((*TRAIN, "--set", "run.workers=0"), "run.workers must be a count >= 1, auto"),
    # Elastic groups (issue 22): refused before anything starts.
    "elastic MIN > MAX": Case((*TRAIN, "--workers", "3:2"), "run.workers 3:2: MIN 3 is larger than MAX 2"),
    "elastic MIN 0": Case((*TRAIN, "--workers", "0:2"), "run.workers 0:2: MIN must be >= 1, got 0"),
    "elastic range of three": Case((*TRAIN, "--set", "run.workers=[1, 2, 3]"),
                                   "run.workers must be a count, auto, or [MIN, MAX] (two integers)"),
    "elastic MAX beyond the machine": Case((*TRAIN, "--workers", "1:64"),
                                           "64 workers x 1 CPU need 64 CPUs, more than the cluster can ever hold"),
    "elastic batch not split by MAX": Case((*TRAIN, "--workers", "1:2", "--set", "data.batch_size=511"),
                                           "run.workers 1:2 may run 2 workers, but data.batch_size 511 does not "
                                           "divide by the world size 2"),
    "elastic batch not split by a size between": Case(
        (*TRAIN, "--workers", "2:4", "--set", "run.cpus_per_worker=0.5", "--set", "data.batch_size=512"),
        "may run 3 workers, but data.batch_size 512 does not divide by the world size 3"),
    "elastic without Ray": Case((*TRAIN, "--no-ray", "--workers", "1:2"), "without Ray a run has one worker"),
    "resize_check_seconds 0": Case((*TRAIN, "--set", "run.resize_check_seconds=0"),
                                   "run.resize_check_seconds must be > 0"),
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
    "r2_gamma negative": Case((*TRAIN, "--set", "loss.r2_gamma=-1"), "loss.r2_gamma must be >= 0"),
    "augment_p above 1": Case((*TRAIN, "--set", "loss.augment_p=2"), "loss.augment_p must be in [0, 1], got 2.0"),
    "cosine.beta2_end 1": Case((*TRAIN, "--set", "cosine.beta2_end=1"), "cosine.beta2_end must be in [0, 1) or -1"),
    "cosine.images negative": Case((*TRAIN, "--set", "cosine.images=-5"), "cosine.images must be >= 0"),
    "lr_decay with cosine": Case((*TRAIN, "--set", "optim.lr_decay=cosine", "--set", "cosine.images=1e6"),
                                 "cosine.images also schedules the learning rates"),
    "batch_per_worker negative": Case((*TRAIN, "--set", "train.batch_per_worker=-1"),
                                      "train.batch_per_worker must be >= 0"),
    "ema_bn unknown": Case((*TRAIN, "--set", "schedule.ema_bn=average"),
                           "schedule.ema_bn must be one of recompute, copy, got 'average'"),
    "reuse_fake with micro-batches": Case((*TRAIN, "--dry-run", "--set", "schedule.reuse_fake=true", "--set",
                                           "train.batch_per_worker=64"),
                                          "schedule.reuse_fake needs one micro-batch per worker, but 512 global, "
                                          "256 per rank in 4 micro-batches of 64"),
    "stage_widths not numbers": Case((*TRAIN, "--set", "model.stage_widths=wide,narrow"),
                                     "model.stage_widths must be a comma list of widths"),
    "r3gan groups not dividing": Case((*TRAIN, "--dry-run", "--set", "model.arch=r3gan", "--set",
                                       "data.source=builtin:digits", "--set", "model.channels=10", "--set",
                                       "model.cardinality=3"),
                                      "model.arch r3gan: model.cardinality 3 does not divide a block's inner width"),
    "r3gan stage_widths count": Case((*TRAIN, "--dry-run", "--set", "model.arch=r3gan", "--set",
                                      "data.source=builtin:digits", "--set", "model.stage_widths=16,16"),
                                     "model.stage_widths has 2 widths, but 32x32 images need 4 stages"),
    "r3gan on points": Case((*TRAIN, "--dry-run", "--set", "model.arch=r3gan"), "r3gan needs image data"),
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
    "recipe with a 5000-digit integer": Case(("train", "{tmp}/big.yaml", "--storage", "{tmp}/runs"),
                                             "recipe {tmp}/big.yaml is not valid YAML: Exceeds the limit",
                                             setup=write("big.yaml", "seed: " + "9" * 5000 + "\n")),
    "--set of a 5000-digit integer": Case((*TRAIN, "--set", "seed=" + "9" * 5000), "seed must be int, got '9999"),
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
    # Super-resolution (issue 20): the scale must divide the HR crops; the eval photos must exist.
    "srgan scale not dividing the crops": Case((*TRAIN, "--dry-run", "--set", "model.arch=srgan", "--set",
                                                "data.source={tmp}/crops30"),
                                               "model.sr_scale 4 does not divide the data's 30x30 HR images",
                                               setup=hr_crops(30)),
    "srgan eval.sr_photos missing": Case((*TRAIN, "--dry-run", "--set", "model.arch=srgan", "--set",
                                          "data.source={tmp}/crops32", "--set", "eval.sr_photos={tmp}/none"),
                                         "eval.sr_photos {tmp}/none: no such file or folder", setup=hr_crops(32)),
    "srgan periodic Inception eval": Case((*TRAIN, "--dry-run", "--set", "model.arch=srgan", "--set",
                                           "data.source={tmp}/crops32", "--set", "eval.every_steps=10"),
                                          "the Inception metrics are the end-of-run crop FID of eval.sr_photos",
                                          setup=hr_crops(32)),
    "srresnet phase without srgan": Case((*TRAIN, "--dry-run", "--set", "schedule.srresnet_steps=100"),
                                         "schedule.srresnet_steps needs a super-resolution model"),
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
    # Storage and metrics checked before anything is written (item 7), dry run and real run alike.
    # Read-only folders: see UNPRIVILEGED_CASES (root passes mode bits); /sys refuses even root.
    "storage is a file": Case(("train", "--storage", "{tmp}/f", "--no-ray", "--max-steps", "1"),
                              "run.storage {tmp}/f: {tmp}/f is a file, not a folder", setup=write("f", "x")),
    "storage under a file, dry run": Case(("train", "--storage", "{tmp}/f/runs", "--dry-run"),
                                          "run.storage {tmp}/f/runs: {tmp}/f is a file", setup=write("f", "x")),
    "storage under a file": Case(("train", "--storage", "{tmp}/f/runs", "--no-ray", "--max-steps", "1"),
                                 "run.storage {tmp}/f/runs: {tmp}/f is a file", setup=write("f", "x")),
    "storage in sysfs": Case(("train", "--storage", "/sys/gan-dist-runs", "--no-ray", "--max-steps", "1"),
                             "cannot create folders in /sys"),
    "storage in sysfs, dry run": Case(("train", "--storage", "/sys/gan-dist-runs", "--dry-run"),
                                      "cannot create folders in /sys"),
    "cache_dir is a file": Case((*TRAIN, "--set", "data.cache_dir={tmp}/f"), "{tmp}/f is a file",
                                setup=write("f", "x")),
    "metrics.host unresolvable": Case((*TRAIN, "--no-ray", "--set", "metrics.host=no-such-host.invalid"),
                                      "metrics.host 'no-such-host.invalid' does not resolve"),
    "metrics.host unresolvable, dry run": Case((*TRAIN, "--dry-run", "--set", "metrics.host=no-such-host.invalid"),
                                               "does not resolve"),
    "metrics.host not of this machine": Case((*TRAIN, "--no-ray", "--set", "metrics.host=192.0.2.1"),
                                             "metrics.host '192.0.2.1' (192.0.2.1) is not an address of this machine"),
    # sample's output (item 7) and its size (item 6), refused before any work.
    "sample --n 10**12": Case(("sample", "{tmp}/none", "--n", "1000000000000", "--out", "{tmp}/x.png"),
                              "--n: must be <= 1,000,000"),
    "sample grid of 20000": Case(("sample", "{tmp}/run", "--n", "20000", "--out", "{tmp}/x.png"),
                                 "--n 20,000 samples of 2 (40,000 values) are too many for one PNG", run=True),
    "sample --out a folder": Case(("sample", "{tmp}/run", "--out", "{tmp}/dir.png"), "--out {tmp}/dir.png is a folder",
                                  run=True, setup=lambda tmp: (tmp / "dir.png").mkdir()),
    "sample --out under a file": Case(("sample", "{tmp}/run", "--out", "{tmp}/f/x.png"),
                                      "--out {tmp}/f/x.png: {tmp}/f is a file", run=True, setup=write("f", "x")),
    "sample --out in sysfs": Case(("sample", "{tmp}/run", "--out", "/sys/x.png"), "cannot create folders in /sys",
                                  run=True),
    # Damaged checkpoints (item 8): sample and eval exit 2, naming the checkpoint.
    "zero-byte state.pt": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "state.pt: refused to load (",
                               run=True, setup=in_checkpoint("state.pt", lambda data: b"")),
    "zero-byte state.pt, eval": Case(("eval", CKPT), "state.pt: refused to load (", run=True,
                                     setup=in_checkpoint("state.pt", lambda data: b"")),
    "manifest {}": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "manifest for rank 0 has no valid world_size",
                        run=True, setup=manifest(lambda m: {})),
    "manifest []": Case(("eval", CKPT), "manifest for rank 0 must be a JSON object, got list", run=True,
                        setup=manifest(lambda m: [])),
    "manifest world_size '1'": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "has no valid world_size",
                                    run=True, setup=manifest(lambda m: {**m, "world_size": "1"})),
    "manifest world_size 0": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "has no valid world_size",
                                  run=True, setup=manifest(lambda m: {**m, "world_size": 0})),
    "manifest naming /etc/passwd": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "must map plain file names",
                                        run=True, setup=manifest(lambda m: {**m, "files": {
                                            **m["files"], "../../../../etc/passwd": "0" * 64}})),
    "checkpoint config.yaml invalid": Case(("sample", CKPT, "--out", "{tmp}/x.png"),
                                           "config.yaml is not a valid config", run=True,
                                           setup=in_checkpoint("config.yaml", lambda data: b"model: [unclosed\n")),
    "checkpoint config.yaml of other keys": Case(("eval", CKPT),
                                                 "config.yaml is not a valid config: unknown config key x", run=True,
                                                 setup=in_checkpoint("config.yaml", lambda d: b"x: 1\n")),
    "checkpoint config.yaml missing": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "config.yaml is missing",
                                           run=True, setup=remove("run/step-000004/config.yaml")),
    "checkpoint config.yaml unlisted": Case(("eval", CKPT), "rank 0's manifest does not list config.yaml", run=True,
                                            setup=steps(remove("run/step-000004/config.yaml"), manifest(lambda m: {
                                                **m, "files": {k: v for k, v in m["files"].items()
                                                               if k != "config.yaml"}}))),
    "state.pt without step": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "state.pt lacks step", run=True,
                                  setup=in_checkpoint("state.pt", state_without("step"))),
    "state.pt without data_meta": Case(("eval", CKPT), "no data metadata", run=True,
                                       setup=in_checkpoint("state.pt", state_without("data_meta"))),
    "state.pt without sample_shape": Case(("sample", CKPT, "--out", "{tmp}/x.png"), "metadata sample_shape must be",
                                          run=True, setup=in_checkpoint("state.pt", meta_without("sample_shape"))),
    "state.pt of a list": Case(("eval", CKPT), "state.pt holds a list", run=True,
                               setup=in_checkpoint("state.pt", lambda data: ckpt.to_bytes([1, 2]))),
    "run config.yaml invalid on resume": Case(("train", "--max-steps", "6", *RUN), "run/config.yaml is not a valid "
                                              "config", run=True, setup=write("run/config.yaml", "seed: [1\n")),
    # `gan-dist report` (issue 24): not a run, a history that does not read, --out nowhere.
    "report of a missing folder": Case(("report", "{tmp}/nope"), "{tmp}/nope is not a run directory (no such folder)"),
    "report of a folder that is not a run": Case(("report", "{tmp}"), "is not a run directory (it has no config.yaml)"),
    "report of a zero-byte history": Case(("report", "{tmp}/run"), "history.parquet is empty (0 bytes)", run=True,
                                          setup=write("run/history.parquet", b"")),
    "report of a history without rows": Case(("report", "{tmp}/run"), "history.parquet is empty (no rows)", run=True,
                                              setup=no_rows),
    "report of a truncated history": Case(("report", "{tmp}/run"), "history.parquet is damaged (", run=True,
                                          setup=truncate("run/history.parquet")),
    "report of a damaged summary.json": Case(("report", "{tmp}/run"), "summary.json is damaged (", run=True,
                                             setup=truncate("run/summary.json")),
    "report --out in a missing folder": Case(("report", "{tmp}/run", "--out", "{tmp}/none/r.html"),
                                             "--out {tmp}/none/r.html: the folder {tmp}/none does not exist", run=True),
    "report --out a folder": Case(("report", "{tmp}/run", "--out", "{tmp}/run/samples"),
                                  "--out {tmp}/run/samples is a folder", run=True),
    # `gan-dist report` of a tune (issue 24): a log that does not read, a member that is not a run.
    "report of a tune with a damaged results.jsonl": Case(
        ("report", "{tmp}/pbt"), "{tmp}/pbt/results.jsonl is damaged (line 2: Expecting", run=True,
        setup=tune(insert_line("pbt/results.jsonl", '{"time": 1.5, "member": ', 1))),
    "report of a tune with a result without a step": Case(
        ("report", "{tmp}/pbt"), "{tmp}/pbt/results.jsonl is damaged (line 1 has no valid step)", run=True,
        setup=tune(insert_line("pbt/results.jsonl", '{"time": 0.5, "member": "member-0", "start_step": 0, '
                                                    '"hyperparams": {}}', 0))),
    "report of a tune whose exploit names no member": Case(
        ("report", "{tmp}/pbt"), "exploits.jsonl is damaged (line 2 names member-7, not a member of the population "
                                 "of 2)", run=True,
        setup=tune(insert_line("pbt/exploits.jsonl", json.dumps({
            "time": 3.5, "member": "member-0", "source": "member-7", "reason": "interval", "step": 2,
            "source_step": 2, "from": {}, "to": {}}), 1))),
    "report of a tune whose member is not a run": Case(
        ("report", "{tmp}/pbt"), "{tmp}/pbt/member-1 is not a run directory (it has no config.yaml)", run=True,
        setup=tune(remove("pbt/member-1/config.yaml"))),
    "report of a tune with a damaged tune.yaml": Case(
        ("report", "{tmp}/pbt"), "{tmp}/pbt/tune.yaml is not a tune record (", run=True,
        setup=tune(write("pbt/tune.yaml", "population: [2\n"))),
    "report of a tune with a damaged tune-summary.json": Case(
        ("report", "{tmp}/pbt"), "{tmp}/pbt/tune-summary.json is damaged (", run=True,
        setup=tune(truncate("pbt/tune-summary.json"))),
    "report of a tune --out a folder": Case(("report", "{tmp}/pbt", "--out", "{tmp}/pbt/member-0"),
                                            "--out {tmp}/pbt/member-0 is a folder", run=True, setup=tune()),
    # The resume guard (item 11): without the run's config.yaml and newest checkpoint, the older
    # checkpoint's own config still refuses other settings.
    "resume guard bypass": Case(("train", "--max-steps", "6", *RUN, "--set", "loss.kind=hinge", "--set",
                                 "optim.lr_g=0.01"), "run run's checkpoint step-000002 was written with loss.kind=",
                                run=True, setup=remove("run/config.yaml", "run/step-000004")),
    # gan-dist tune (issue 23): refused before Ray starts or the tune directory is made.
    "tune population 1": Case((*TUNE, "--population", "1"), "--population: must be at least 2"),
    "tune mutate unknown key": Case((*TUNE, "--population", "2", "--mutate", "optim.momentum=0.1:0.9"),
                                    "--mutate optim.momentum: unknown key (not a config key)"),
    "tune mutate a fixed key": Case((*TUNE, "--population", "2", "--mutate", "model.hidden=16:64"),
                                    "--mutate model.hidden: unknown key (not a hyper-parameter a copied checkpoint"),
    "tune mutate LOW >= HIGH": Case((*TUNE, "--population", "2", "--mutate", "optim.lr=1e-2:1e-4:log"),
                                    "--mutate optim.lr=1e-2:1e-4:log: LOW must be below HIGH, got 0.01 >= 0.0001"),
    "tune mutate log from 0": Case((*TUNE, "--population", "2", "--mutate", "loss.gp_weight=0:10:log"),
                                   "a log range needs LOW > 0"),
    "tune mutate twice": Case((*TUNE, "--population", "2", "--mutate", "optim.lr=1e-4:1e-2", "--mutate",
                               "optim.lr=1e-3:1e-2"), "--mutate optim.lr is given twice"),
    "tune metric the recipe lacks": Case((*TUNE, "--population", "2", "--metric", "fid"),
                                         "--metric fid: recipe ring8 cannot compute it (it needs images"),
    "tune metric unknown": Case((*TUNE, "--population", "2", "--metric", "inception_score"),
                                "--metric inception_score: unknown"),
    "tune perturb-every off the log steps": Case((*TUNE, "--population", "2", "--perturb-every", "15"),
                                                 "--perturb-every 15 must be a multiple of train.log_every 10"),
    "tune perturb-every past the end": Case((*TUNE, "--population", "2", "--perturb-every", "100"),
                                            "--perturb-every 100 must be below train.max_steps 100"),
    "tune perturb-factors reversed": Case((*TUNE, "--population", "2", "--perturb-factors", "1.2:0.8"),
                                          "--perturb-factors 1.2:0.8: expected 0 < DOWN < 1 < UP"),
    "tune perturb-factors one number": Case((*TUNE, "--population", "2", "--perturb-factors", "2"),
                                            "--perturb-factors expects DOWN:UP, two numbers such as 0.8:1.2, got '2'"),
    "tune resample-probability above 1": Case((*TUNE, "--population", "2", "--resample-probability", "1.5"),
                                              "--resample-probability must be within [0, 1], got 1.5"),
    "tune quantile above a half": Case((*TUNE, "--population", "2", "--quantile", "0.6"),
                                       "--quantile must be above 0 and at most 0.5"),
    "tune without Ray": Case((*TUNE, "--population", "2", "--set", "run.use_ray=false"),
                             "gan-dist tune runs its members on Ray"),
    "exploit policy outside a tune": Case((*TRAIN, "--set", "monitor.collapse=exploit"),
                                          "monitor.collapse=exploit replaces a member of a population (gan-dist tune)"),
    "run.stop_at_step negative": Case((*TRAIN, "--set", "run.stop_at_step=-1"), "run.stop_at_step must be >= 0"),
    # A model or loss of the user's own (issue 26), refused at start-up: plug-ins that do not load
    # or break the contract (tests/plugin_fixtures.py; the example plug-in of examples/custom-model).
    "model.arch path that does not import": Case((*TRAIN, "--set", "model.arch=no_such_module:build"),
                                                 "model.arch no_such_module:build: cannot import no_such_module "
                                                 "(ModuleNotFoundError: No module named 'no_such_module')"),
    "model.arch module failing as it loads": Case((*TRAIN, "--set", "model.arch=plugin_fixtures_broken:build"),
                                                  "cannot import plugin_fixtures_broken (RuntimeError: this plug-in "
                                                  "fails as it loads)"),
    "model.arch attribute missing": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:no_such_builder"),
                                         "plugin_fixtures has no attribute no_such_builder"),
    "model.arch not a path": Case((*TRAIN, "--set", "model.arch=a:b:c"), "model.arch 'a:b:c' is not a module:attr path"),
    "model.arch entry point missing": Case((*TRAIN, "--set", "model.arch=no-such-model"),
                                           "model.arch 'no-such-model' is not a built-in (cgan, dcgan, mlp, r3gan, "
                                           "r3gan_cond, srgan), an entry point of the group gan_dist.models"),
    "model.arch not a function": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:not_a_builder"),
                                      "model.arch plugin_fixtures:not_a_builder is a int, not a builder function"),
    "builder returning one module": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:one_module"),
                                         "the builder returned a Linear, not a tuple (G, D) of torch.nn.Modules"),
    "builder raising": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:reads_a_missing_option"),
                            "model.arch plugin_fixtures:reads_a_missing_option: the builder raised KeyError: 'depth'"),
    "builder of an unknown task": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:unknown_task"),
                                       "the builder's task is 'text_to_image', not one of unconditional, conditional, "
                                       "super_resolution"),
    "G of the wrong shape": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:g_of_three_values"),
                                 "model.arch plugin_fixtures:g_of_three_values: G(z) returned shape [256, 3] for a "
                                 "batch of 256; the data's samples need [256, 2]"),
    "D logits of shape [B, 1]": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:d_of_shape_b1"),
                                     "D(x, y) returned shape [256, 1] for a batch of 256; it must return one logit per "
                                     "sample, shape [256]"),
    "conditional G without labels": Case((*TRAIN, "--set", "model.arch=plugin_fixtures:conditional_without_labels"),
                                         "G(z, y) failed (TypeError:"),
    "model.options not a mapping": Case((*TRAIN, "--set", "model.options=3"), "model.options must be a mapping, got 3"),
    "unknown option of the example plug-in": Case((*TRAIN, "--set", "model.arch=custom-resnet", "--set",
                                                   "data.source=builtin:digits", "--set", "model.options.depth=3"),
                                                  "model.arch custom-resnet (entry point custom_gan.models:"
                                                  "build_resnet_gan): unknown model.options key depth"),
    "loss of per-sample values": Case((*TRAIN, "--set", "loss.kind=plugin_fixtures:per_sample"),
                                      "loss.kind plugin_fixtures:per_sample: d_loss returned shape [4] for logits of "
                                      "shape [4], not a scalar"),
    "loss without a gradient": Case((*TRAIN, "--set", "loss.kind=plugin_fixtures:detached"),
                                    "loss.kind plugin_fixtures:detached: d_loss does not depend on the logits"),
    "loss not an AdversarialLoss": Case((*TRAIN, "--set", "loss.kind=plugin_fixtures:not_a_loss"),
                                        "loss.kind plugin_fixtures:not_a_loss is a dict, not a "
                                        "gan_dist.losses.AdversarialLoss"),
    "loss.kind entry point missing": Case((*TRAIN, "--set", "loss.kind=no-such-loss"),
                                          "loss.kind 'no-such-loss' is not a built-in"),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir) -> Path:
    """A completed 4-step ring8 run without Ray (checkpoints at steps 2 and 4), trained once."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "--max-steps", "4", *(arg.replace("{tmp}", str(root)) for arg in RUN)]) == 0
    return root / "run"


def prepare(case: Case, tmp: Path, request) -> None:
    if case.run:
        shutil.copytree(request.getfixturevalue("trained_run"), tmp / "run")
    if case.setup is not None:
        case.setup(tmp)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys, cache_dir, request):
    prepare(case, tmp_path, request)
    capsys.readouterr()
    for key, value in case.env:
        monkeypatch.setenv(key, value.replace("{tmp}", str(tmp_path)))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in case.argv])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == case.code, out.err
    assert len(lines) == 1 and case.expect.replace("{tmp}", str(tmp_path)) in lines[0], out.err
    assert "Traceback" not in out.err + out.out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "bad input wrote something"


# Hangs (item 5): a SIGTERM reaches a run blocked in I/O -----------------------------------------

class _StallingFiles(http.server.SimpleHTTPRequestHandler):
    """Static files; once `stall` is set, a whole-shard GET (a training read, not the ranged
    probe of a dry run) gets its headers and then no byte more until `release`."""
    stall, stalled, release = threading.Event(), threading.Event(), threading.Event()

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        if self.stall.is_set() and self.path.endswith(".tar") and "Range" not in self.headers:
            self.stalled.set()
            self.release.wait(120)
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def stalling_server(tmp_path, cache_dir):
    """ring8's packed shards served over HTTP from 127.0.0.1; its handler class's events stall them."""
    assert main(["train", "--dry-run", "--storage", str(tmp_path / "probe")]) == 0  # packs ring8 into the cache
    shutil.copytree(cache_dir / "builtin" / "ring8-v1", tmp_path / "www" / "ring8")
    for event in (_StallingFiles.stall, _StallingFiles.stalled, _StallingFiles.release):
        event.clear()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_StallingFiles, directory=str(tmp_path / "www")))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ring8"
    _StallingFiles.release.set()
    server.shutdown()
    server.server_close()


def test_sigterm_stops_a_run_blocked_on_a_stalled_shard_without_saving_a_half_step(tmp_path, stalling_server, capsys):
    """A --no-ray run with n_critic 2 reads a batch after each D update: a SIGTERM while that
    read stalls (the read's own timeout is 10 minutes here) ends the run within seconds,
    saves nothing (every checkpoint is one of the regular ones), writes summary.json naming
    the checkpoint a resume starts from, and that resume ends as an uninterrupted run does."""
    common = ["--no-ray", "--storage", str(tmp_path), "--set", "schedule.n_critic=2", "--set", "checkpoint.every=5",
              "--set", "train.log_every=5", "--set", "metrics.port=0"]
    argv = ["train", "--name", "stalled", "--max-steps", "100000", "--set", f"data.source={stalling_server}", *common]
    env = dict(os.environ, GAN_DIST_IO_TIMEOUT="600", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        run_dir = tmp_path / "stalled"
        deadline = time.monotonic() + 120
        while not (run_dir / "step-000005").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _StallingFiles.stall.set()
        assert _StallingFiles.stalled.wait(120), "the run never read a shard after the stall began"
        time.sleep(0.5)  # blocked in the read now
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not stop a run blocked on a stalled shard")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and not (run_dir / "error.log").exists(), err
    summary = json.loads((run_dir / "summary.json").read_text())
    newest = ckpt.find_latest(run_dir)
    assert summary["status"] == "stopped" and "SIGTERM while waiting for data" in summary["reason"]
    assert summary["reason"].endswith(f"to resume from {newest.name}")
    steps = [int(folder.name.split("-")[1]) for folder in ckpt.step_dirs(run_dir)]
    assert steps and all(step % 5 == 0 for step in steps), f"a stop saved a step of its own: {steps}"

    _StallingFiles.stall.clear()
    _StallingFiles.release.set()
    until = str(max(steps) + 5)
    assert main(["train", "--name", "stalled", "--max-steps", until, "--set", f"data.source={stalling_server}",
                 *common]) == 0
    local = str(tmp_path / "www" / "ring8")
    assert main(["train", "--name", "straight", "--max-steps", until, "--set", f"data.source={local}", *common]) == 0
    capsys.readouterr()
    resumed, straight = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("stalled", "straight"))
    assert resumed["fingerprint"] == straight["fingerprint"]


# Read-only folders and privileged ports ------------------------------------------------------
# A process with CAP_DAC_OVERRIDE (root, which runs these tests here) writes into any folder
# whatever its mode bits, and binds ports below 1024. These rows run gan-dist in a subprocess
# as a user would: when the tests run as root, without those capabilities (setpriv drops them
# from the bounding set), so a folder of mode 0555 refuses writes as it does for everyone else.

def read_only(name: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        (tmp / name).chmod(0o555)
    return make


UNPRIVILEGED_CASES: dict[str, Case] = {
    "storage read-only, dry run": Case(("train", "--storage", "{tmp}/ro/runs", "--dry-run"),
                                       "run.storage {tmp}/ro/runs: {tmp}/ro is not writable by this user",
                                       setup=read_only("ro")),
    "storage read-only": Case(("train", "--storage", "{tmp}/ro/runs", "--no-ray", "--max-steps", "1"),
                              "{tmp}/ro is not writable by this user", setup=read_only("ro")),
    "GAN_DIST_CACHE read-only": Case(("train", "--storage", "{tmp}/runs", "--dry-run"), "{tmp}/ro is not writable",
                                     setup=read_only("ro"), env=(("GAN_DIST_CACHE", "{tmp}/ro/cache"),)),
    "sample --out read-only": Case(("sample", "{tmp}/run", "--out", "{tmp}/ro/x.png"),
                                   "--out {tmp}/ro/x.png: {tmp}/ro is not writable by this user", run=True,
                                   setup=read_only("ro")),
    "metrics.port 80": Case(("train", "--storage", "{tmp}/runs", "--no-ray", "--set", "metrics.port=80"),
                            "metrics.port 80 on 127.0.0.1: permission denied"),
}

DROPPED = "-dac_override,-dac_read_search,-fowner,-net_bind_service"


def unprivileged(argv: list[str]) -> list[str]:
    """argv run without the capabilities that pass mode bits and bind ports below 1024."""
    if os.geteuid() != 0:
        return argv
    assert shutil.which("setpriv"), "setpriv (util-linux) drops root's capabilities for these rows"
    return ["setpriv", "--bounding-set", DROPPED, "--inh-caps", DROPPED, *argv]


@pytest.mark.parametrize("case", UNPRIVILEGED_CASES.values(), ids=UNPRIVILEGED_CASES.keys())
def test_unprivileged_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, cache_dir, request):
    prepare(case, tmp_path, request)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = {**os.environ, "GAN_DIST_CACHE": str(cache_dir),
           **{key: value.replace("{tmp}", str(tmp_path)) for key, value in case.env}}
    argv = [sys.executable, "-m", "gan_dist", *(arg.replace("{tmp}", str(tmp_path)) for arg in case.argv)]
    proc = subprocess.run(unprivileged(argv), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.code, proc.stderr
    assert len(lines) == 1 and case.expect.replace("{tmp}", str(tmp_path)) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "bad input wrote something"


def test_a_port_this_user_may_not_bind_is_not_called_taken():
    """RunMetrics.serve falls back to a free port for a port that is taken or denied, and says which."""
    code = ("import warnings; from gan_dist.monitor.metrics import RunMetrics\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always'); port = RunMetrics().serve('127.0.0.1', 80)\n"
            "print(port, seen[0].message)")
    proc = subprocess.run(unprivileged([sys.executable, "-c", code]), capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    port, message = proc.stdout.split(" ", 1)
    assert int(port) != 80 and "may not be bound by this user" in message and "taken" not in message


# Damaged checkpoints on resume (item 8) and the summaries of failed attempts (item 15) --------

def truncated_weight(net: str) -> Callable[[bytes], bytes]:
    """state.pt whose first weight of `net` has one row: G loads, then `net` fails half-way."""
    def change(data: bytes) -> bytes:
        state = ckpt.from_bytes(data, "state")
        first = next(iter(state[net]))
        state[net][first] = state[net][first][:1]
        return ckpt.to_bytes(state)
    return change


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache_dir) -> dict:
    """The summary of the trained run's settings trained straight to step 6."""
    root = tmp_path_factory.mktemp("straight")
    assert main(["train", "--max-steps", "6", *(arg.replace("{tmp}", str(root)) for arg in RUN)]) == 0
    return json.loads((root / "run" / "summary.json").read_text())


@pytest.mark.parametrize("damage", [
    in_checkpoint("state.pt", state_without("step")),
    in_checkpoint("state.pt", lambda data: b""),
    in_checkpoint("state.pt", truncated_weight("D")),
    in_checkpoint("config.yaml", lambda data: b"seed: [1\n"),
    in_checkpoint("state.pt", lambda data: ckpt.to_bytes({**ckpt.from_bytes(data, "state"), "step": 3})),
], ids=["no step", "zero bytes", "D half-loaded", "config invalid", "step disagrees"])
def test_resume_falls_back_past_a_newest_checkpoint_that_verifies_but_does_not_load(
        damage, tmp_path, trained_run, straight_run, capsys):
    shutil.copytree(trained_run, tmp_path / "run")
    damage(tmp_path)
    assert main(["train", "--max-steps", "6", *(arg.replace("{tmp}", str(tmp_path)) for arg in RUN)]) == 0
    out = capsys.readouterr().out
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    assert resumed["checkpoints"]["fallbacks"] >= 1
    assert "resumed from step-000002" in out
    # Loaded whole from step 2, never from a half-loaded state: the run ends as a straight one.
    assert resumed["fingerprint"] == straight_run["fingerprint"]


def test_a_resume_that_fails_keeps_the_completed_summary(tmp_path, trained_run, capsys):
    """No checkpoint loads: the resume fails (it does not start afresh over a run that has
    checkpoints), and its summary goes beside the completed run's, named on the console."""
    shutil.copytree(trained_run, tmp_path / "run")
    for step in (2, 4):
        in_checkpoint("state.pt", state_without("step"), step=step)(tmp_path)
    completed = (tmp_path / "run" / "summary.json").read_text()
    assert main(["train", "--max-steps", "6", *(arg.replace("{tmp}", str(tmp_path)) for arg in RUN)]) == 1
    err = capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").read_text() == completed
    failed = list((tmp_path / "run").glob("summary-failed-*.json"))
    assert len(failed) == 1 and json.loads(failed[0].read_text())["status"] == "failed"
    assert "no checkpoint of" in err and f"summary in {failed[0].name}: the completed run's summary.json is kept" in err
    assert ckpt.step_dirs(tmp_path / "run"), "the damaged checkpoints are left for the user"


def test_a_run_that_dies_of_corrupt_data_reports_what_it_read(tmp_path, capsys):
    """Every shard holds one image that does not decode: past data.max_corrupt_fraction the run
    dies, and its summary reports the samples read and skipped as of the last log interval,
    not zeros."""
    corrupt_image_dataset(tmp_path / "ds")
    argv = ["train", "--no-ray", "--storage", str(tmp_path), "--name", "bad", "--max-steps", "1000",
            "--set", f"data.source={tmp_path / 'ds'}", "--set", "model.arch=dcgan", "--set", "model.channels=8",
            "--set", "data.batch_size=4", "--set", "train.log_every=1", "--set", "metrics.port=0",
            "--set", "monitor.class_coverage=false", "--set", "data.max_corrupt_fraction=0.05"]
    assert main(argv) == 1
    capsys.readouterr()
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "failed" and "max_corrupt_fraction" in summary["error"]
    last = summary["final"]
    assert summary["data"]["samples_seen"] == last["samples_seen"] > 0
    assert summary["data"]["corrupt_samples"] == last["corrupt_samples"] > 0


# The Ray dashboard misbehaving under `gan-dist submit` (items 5 and the minor ones) -----------

class _Dashboard(http.server.BaseHTTPRequestHandler):
    """A stand-in for a broken head, as `mode` says: "silent" reads each request and never
    answers; "401" and "403" refuse every token; "html" answers 200 with a web page; "json"
    answers 200 with JSON that is not Ray's; "version-only" answers GET /api/version as Ray
    2.60 does, then goes silent."""
    mode = "silent"
    release = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        version = self.mode == "version-only" and self.path == "/api/version"
        if self.mode in ("silent", "version-only") and not version:
            self.release.wait(120)
            return
        status, body = {"401": (401, b"Unauthorized"), "403": (403, b"Forbidden"),
                        "html": (200, b"<html>nginx</html>"), "json": (200, b'{"hello": 1}')}.get(
            self.mode, (200, b'{"ray_version": "2.60.0", "ray_commit": "x", "version": "x"}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET


@pytest.fixture
def dashboard():
    """A dashboard URL on 127.0.0.1 whose behaviour is _Dashboard.mode."""
    _Dashboard.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Dashboard.release.set()
    server.shutdown()
    server.server_close()


def test_submit_to_a_dashboard_that_never_answers_ends_naming_its_url(dashboard, tmp_path):
    """It accepts the connection (so the TCP check passes) and never answers: before, `submit`
    waited forever in Ray's client; now each call has a time limit and bounded retries."""
    _Dashboard.mode = "silent"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(GAN_DIST_SUBMIT_TIMEOUT="1", GAN_DIST_SUBMIT_RETRIES="1", HOME=str(tmp_path))
    argv = [sys.executable, "-m", "gan_dist", "submit", "--address", dashboard, "--name", "r", "--storage",
            str(tmp_path / "runs")]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("submit hung on a dashboard that never answers")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"the Ray dashboard at {dashboard} did not answer GET /api/version (time limit 1 s, 2 attempt(s)" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("variable, value, expect", [
    ("GAN_DIST_SUBMIT_TIMEOUT", "soon", "GAN_DIST_SUBMIT_TIMEOUT must be a number of seconds > 0, got 'soon'"),
    ("GAN_DIST_SUBMIT_TIMEOUT", "inf", "GAN_DIST_SUBMIT_TIMEOUT must be a number of seconds > 0, got 'inf'"),
    ("GAN_DIST_SUBMIT_RETRIES", "101", "GAN_DIST_SUBMIT_RETRIES must be an integer in 0..100, got '101'"),
])
def test_submit_refuses_a_bad_limit_in_the_environment_before_calling_the_dashboard(variable, value, expect, dashboard,
                                                                                   tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({variable: value, "HOME": str(tmp_path)})
    argv = [sys.executable, "-m", "gan_dist", "submit", "--address", dashboard, "--name", "r", "--storage",
            str(tmp_path / "runs")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("mode, token, expect", [
    ("401", True, "rejected the token from {tmp}/token (401 Unauthorized)"),
    ("403", True, "rejected the token from {tmp}/token (403 Forbidden)"),
    ("401", False, "requires a token and none was found"),
    ("html", False, "is not a working Ray dashboard (GET /api/version: "),
    ("json", False, "is not a working Ray dashboard (GET /api/version: "),
])
def test_submit_names_what_the_dashboard_did_wrong(mode, token, expect, dashboard, tmp_path, monkeypatch, capsys):
    _Dashboard.mode = mode
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    (tmp_path / "token").write_text("secret-token-value\n")
    argv = ["submit", "--address", dashboard, "--name", "r", "--storage", str(tmp_path / "runs")]
    assert main(argv + (["--token-file", str(tmp_path / "token")] if token else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect.replace("{tmp}", str(tmp_path)) in err, err
    assert "secret-token-value" not in err


@pytest.mark.timeout(120)
def test_following_a_job_ends_when_the_dashboard_stops_answering(dashboard):
    """The log stream has no time limit of its own; the status polls beside it have one."""
    from gan_dist.integrations.ray import DashboardUnanswered, follow_job, job_client

    _Dashboard.mode = "version-only"
    client = job_client(dashboard, None, None, timeout=1, retries=0)
    with pytest.raises(DashboardUnanswered, match=f"the Ray dashboard at {dashboard} did not answer GET /api/jobs/"):
        follow_job(client, "raysubmit_x", out=io.StringIO(), poll_seconds=0.2)


# A Python without gan-dist's dependencies (item 17) -------------------------------------------

WITHOUT_TORCH = "import sys; sys.modules['torch'] = None  # `import torch` now fails as if it were not installed\n"


@pytest.mark.parametrize("python_args, script, missing", [
    (["-S", "-m", "gan_dist", "train", "--dry-run"], None, "PyYAML"),  # no site-packages at all
    (["-c"], "import runpy, sys; sys.argv = ['gan-dist', 'train', '--dry-run']; "
             "runpy.run_module('gan_dist', run_name='__main__')", "torch"),
    (["-S", "launch/ray_job.py", "ring8", "--name", "r", "--storage", "/mnt/runs"], None, "PyYAML"),
    (["-c"], "import runpy, sys; sys.argv = ['ray_job.py', 'ring8', '--name', 'r', '--storage', '/mnt/runs']; "
             "runpy.run_path('launch/ray_job.py', run_name='__main__')", "torch"),
], ids=["-m gan_dist without site-packages", "-m gan_dist without torch", "ray_job.py without site-packages",
        "ray_job.py without torch"])
def test_a_python_without_the_dependencies_says_which_and_what_to_do(python_args, script, missing, tmp_path):
    argv = [sys.executable, *python_args] + ([WITHOUT_TORCH + script] if script else [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"this Python ({sys.executable}) lacks {missing}, which gan-dist needs: install" in lines[0]
    assert "Traceback" not in proc.stderr
