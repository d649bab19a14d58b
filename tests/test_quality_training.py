"""FID during training (eval.every_steps) and at the end (eval.inception): the history rows,
the log line, summary.json's keys naming n and the network, and an eval that does not perturb
the run (the same fingerprint as without)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from gan_dist.cli import main
from gan_dist.quality.inception import NETWORK_SHA256

pytestmark = [pytest.mark.unit, pytest.mark.slow]

RUN = ["train", "dcgan-digits", "--no-ray", "--max-steps", "40", "--set", "train.log_every=10",
       "--set", "checkpoint.every=20", "--set", "metrics.port=0", "--set", "monitor.class_coverage=false",
       "--set", "eval.num_samples=64"]
EVALS = ["--set", "eval.every_steps=20", "--set", "eval.every_n=16", "--set", "eval.inception=true",
         "--set", "eval.inception_n=16", "--set", "checkpoint.keep_best_metric=fid",
         "--set", "checkpoint.keep_best_mode=min"]


def test_evals_write_rows_and_summary_and_leave_the_run_unchanged(tmp_path, capsys, cache_dir):
    assert main([*RUN, "--storage", str(tmp_path), "--name", "plain"]) == 0
    assert main([*RUN, *EVALS, "--storage", str(tmp_path), "--name", "evals"]) == 0
    out = capsys.readouterr().out
    assert "eval at step 20: fid16 " in out and "eval at step 40: fid16 " in out
    plain, evals = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("plain", "evals"))
    assert evals["fingerprint"] == plain["fingerprint"]  # the evals did not perturb training
    ev = evals["eval"]
    assert ev["inception_n"] == 16 and ev["inception_sha256"] == NETWORK_SHA256
    assert ev["fid16"] > 0 and 0 <= ev["precision16"] <= 1 and "kid16" in ev and "fid16" not in plain["eval"]
    rows = {r["step"]: r for r in pq.read_table(tmp_path / "evals" / "history.parquet").to_pylist()}
    assert sorted(s for s, r in rows.items() if r.get("fid") is not None) == [20, 40]
    assert rows[20]["eval_n"] == 16 and rows[20]["eval_seconds"] > 0 and rows[10].get("fid") is None
    # The plain run's rows are the evals run's, but for the eval columns and timings.
    plain_rows = pq.read_table(tmp_path / "plain" / "history.parquet").to_pylist()
    same = lambda r: {k: v for k, v in r.items() if k in ("step", "loss_d", "loss_g", "grad_norm_d")}  # noqa: E731
    assert [same(r) for r in plain_rows] == [same(rows[r["step"]]) for r in plain_rows]


def test_keep_best_fid_needs_periodic_evals_at_checkpoint_steps(capsys, tmp_path):
    assert main([*RUN, "--set", "checkpoint.keep_best_metric=fid", "--set", "checkpoint.keep_best_mode=min",
                 "--storage", str(tmp_path)]) == 2
    assert "fid needs eval.every_steps > 0 dividing checkpoint.every" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
