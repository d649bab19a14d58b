"""A real 2-worker Ray run on damaged shards: it completes and counts what it skipped."""

from __future__ import annotations

import json
import tarfile

import pytest

from data_helpers import replace_member, tar_members, truncate
from gan_dist.config import resolve
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS, BATCH, WORKERS = 300, 512, 2


def test_ray_run_on_corrupt_and_truncated_shards_completes_and_counts(tmp_path, cli):
    data = tmp_path / "ring8"
    assert cli("data", "pack", "builtin:ring8", "--out", str(data)).returncode == 0
    # one corrupted record (256 points) inside an intact tar, and one shard cut in half
    record = sorted(n for n in tar_members(data / "shard-000003.tar") if n.endswith(".pts.npy"))[5]
    replace_member(data, "shard-000003.tar", record, b"\x93NUMPY this is not an array")
    truncate(data / "shard-000007.tar", 0.5)

    overrides = [f"data.source={data}", "data.max_corrupt_fraction=0.25", "data.num_workers=1",
                 "train.log_every=100", "train.sample_every=1000", "checkpoint.every=1000",
                 "eval.num_samples=500"]
    res = cli("train", "ring8", "--workers", str(WORKERS), "--max-steps", str(STEPS), "--storage",
              str(tmp_path / "runs"), "--name", "bad-data", *[a for o in overrides for a in ("--set", o)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "bad-data" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["data"]["samples_seen"] == STEPS * BATCH

    # What each rank's stream skips in those steps, worked out here without Ray: the same count.
    cfg = resolve("ring8", overrides)
    index = resolve_source(cfg.data.source)
    expected = 0
    for rank in range(WORKERS):
        stream = RankStream(index, rank, WORKERS, BATCH // WORKERS, cfg.seed, cfg.data.shuffle_window,
                            num_workers=cfg.data.num_workers, processes=False,
                            max_corrupt_fraction=cfg.data.max_corrupt_fraction)
        for _ in range(STEPS):
            stream.next_batch()
        expected += stream.corrupt_samples
    assert summary["data"]["corrupt_samples"] == expected
    # 300 steps pass every record at least once, so both damages were met: the corrupt record,
    # and the records after the cut (the truncated shard fails its checksum and is read
    # record by record: what comes before the cut is used)
    lost_after_cut = 32 - len(records_before_cut(data / "shard-000007.tar"))
    assert 0 < lost_after_cut < 32
    assert expected >= 256 * (1 + lost_after_cut)


def records_before_cut(path) -> set[str]:
    """Keys of the records of a truncated tar whose members all precede the cut."""
    keys, last = [], None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                tar.extractfile(member).read()
                keys.append(member.name.split(".")[0])
    except (tarfile.TarError, OSError):
        last = keys[-1] if keys else None  # its other member may be lost
    return {k for k in keys if k != last}
    assert "skipped bad data" in res.stderr + res.stdout
