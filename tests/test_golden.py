"""Golden values: a 200-step CPU run of ring8 and of dcgan-digits, whose losses at fixed steps
and final fingerprint are stored in tests/golden/ and compared exactly.

Every other parity test compares the code with itself; this one compares it with what it
computed when the values were recorded, so a refactor that reorders RNG draws, changes a
reduction or drops an update fails here. When a change is meant to alter the numbers,
regenerate them and say why in the commit:

    GAN_DIST_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

The values are exact for one CPU kind and torch build (one torch thread, fp32). On another
CPU (its vector units pick other kernels) the losses are compared to 1e-4 relative and the
fingerprint is not compared; the test says so in its output.
"""

from __future__ import annotations

import json
import os
import platform
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.unit, pytest.mark.slow]

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("GAN_DIST_REGEN_GOLDEN") == "1"
STEPS, EVERY = 200, 50

RUNS = {
    "ring8": ["ring8", "--set", "data.batch_size=128", "--set", "eval.num_samples=500"],
    "dcgan-digits": ["dcgan-digits", "--set", "eval.num_samples=256"],
}


def machine() -> dict:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    vector = sorted(f for f in flags.split() if f.startswith(("avx", "fma", "amx")))
    return {"torch": torch.__version__, "machine": platform.machine(), "vector_flags": vector}


def run_values(cli, tmp_path: Path, name: str) -> dict:
    args = RUNS[name]
    done = cli("train", *args, "--no-ray", "--max-steps", str(STEPS), "--storage", str(tmp_path), "--name", name,
               "--set", f"train.log_every={EVERY}", "--set", "checkpoint.every=100",
               "--set", "train.sample_every=100", "--set", "metrics.port=0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / name
    summary = json.loads((run / "summary.json").read_text())
    rows = pq.read_table(run / "history.parquet").to_pylist()
    return {
        "losses": {str(r["step"]): [r["loss_d"], r["loss_g"]] for r in rows},
        "fingerprint": summary["fingerprint"],
        "eval": summary["eval"],
    }


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run(tmp_path, name):
    # A cache of its own: the data's classifier (class coverage, domain FID) is trained by this
    # run in this process, not by whichever test of the session trained it first (in a Ray
    # worker of one thread, its weights differ in the last bits and the eval values with them).
    cli = partial(run_cli, cache=tmp_path / "cache")
    got = run_values(cli, tmp_path, name)
    path = GOLDEN / f"{name}.json"
    if REGEN:
        path.write_text(json.dumps({"machine": machine(), **got}, indent=1) + "\n")
        pytest.skip(f"regenerated {path}")
    assert path.exists(), f"{path} is missing: GAN_DIST_REGEN_GOLDEN=1 pytest {__file__}"
    want = json.loads(path.read_text())
    assert sorted(got["losses"], key=int) == sorted(want["losses"], key=int), "logged steps differ"
    if want["machine"] == machine():
        assert got["losses"] == want["losses"]
        assert got["fingerprint"] == want["fingerprint"]
        assert got["eval"] == want["eval"]
    else:
        print(f"golden values were recorded on {want['machine']}, this is {machine()}: losses to 1e-4")
        for step, values in want["losses"].items():
            assert got["losses"][step] == pytest.approx(values, rel=1e-4), f"step {step}"
