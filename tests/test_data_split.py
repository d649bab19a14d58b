"""The data plane's invariants: exactly-once per pass, equal steps, an exact cursor."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from gan_dist.data.index import INDEX_FILE, DatasetIndex
from gan_dist.data.pack import npy_bytes, write_shards
from gan_dist.data.sources import DataError, resolve_source
from gan_dist.data.stream import RankStream, rank_slice, shards_of_rank

pytestmark = pytest.mark.unit


def make_dataset(folder: Path, num_records: int, rows: int, records_per_shard: int) -> DatasetIndex:
    """Records whose rows carry unique sample ids (x = [id, id], y = id)."""
    folder.mkdir(parents=True)

    def records():
        for r in range(num_records):
            ids = np.arange(r * rows, (r + 1) * rows)
            yield {"__key__": f"{r:08d}", "pts.npy": npy_bytes(np.stack([ids, ids], 1).astype(np.float32)),
                   "cls.npy": npy_bytes(ids.astype(np.int64)), "__samples__": rows}

    meta = {"name": "ids", "kind": "points", "sample_shape": [2], "num_classes": 0,
            "fields": {"x": "pts.npy", "y": "cls.npy"}}
    write_shards(records(), folder, records_per_shard, 0, meta)
    return DatasetIndex.read(str(folder), str(folder / INDEX_FILE))


def epoch_ids(stream: RankStream) -> list[int]:
    """The sample ids this rank reads in one pass (its whole slice of epoch 0); the stream's
    batches are one record long."""
    ids = [int(i) for _ in range(stream.slice_len) for i in stream.next_batch()["y"]]
    assert stream.cursor.epoch == 1 and stream.cursor.record == 0
    return ids


# (records, records per shard) -> shard counts below, equal to and above the rank counts.
LAYOUTS = [(12, 12), (12, 6), (12, 4), (13, 3), (40, 2)]


@pytest.mark.parametrize("num_records, per_shard", LAYOUTS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_sample_read_exactly_once_per_pass(tmp_path, num_records, per_shard, world_size):
    index = make_dataset(tmp_path / "ds", num_records, rows=5, records_per_shard=per_shard)
    seen = []
    for rank in range(world_size):
        seen += epoch_ids(RankStream(index, rank, world_size, batch_size=5, seed=3, window=4))
    assert sorted(seen) == list(range(num_records * 5))


@pytest.mark.parametrize("num_records, per_shard", LAYOUTS)
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_rank_runs_the_same_steps(tmp_path, num_records, per_shard, world_size):
    index = make_dataset(tmp_path / "ds", num_records, rows=5, records_per_shard=per_shard)
    steps = 3 * num_records * 5 // 7 + 5  # several passes, whatever each rank's slice length
    for rank in range(world_size):
        stream = RankStream(index, rank, world_size, batch_size=7, seed=0, window=4)
        batches = [stream.next_batch() for _ in range(steps)]
        assert all(b["x"].shape == (7, 2) and b["y"].shape == (7,) for b in batches)
        assert stream.samples_seen == 7 * steps
        assert stream.cursor.epoch >= 2


def test_split_is_by_global_rank_and_covers_fewer_shards_than_ranks(tmp_path):
    index = make_dataset(tmp_path / "ds", 8, rows=2, records_per_shard=8)  # one shard, 4 ranks
    assert all(shards_of_rank(index, r, 4, seed=0) == [0] for r in range(4))
    assert [rank_slice(8, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_order_is_deterministic_given_the_seed(tmp_path):
    index = make_dataset(tmp_path / "ds", 24, rows=3, records_per_shard=4)

    def ids(seed):
        stream = RankStream(index, 1, 2, batch_size=5, seed=seed, window=4)
        return np.concatenate([stream.next_batch()["y"] for _ in range(30)])

    assert np.array_equal(ids(1), ids(1))
    assert not np.array_equal(ids(1), ids(2))


@pytest.mark.parametrize("consumed", [0, 1, 3, 8, 21])
def test_resume_from_cursor_yields_exactly_what_comes_next(tmp_path, consumed):
    index = make_dataset(tmp_path / "ds", 18, rows=4, records_per_shard=5)
    original = RankStream(index, 0, 2, batch_size=6, seed=9, window=4)  # batches cut records mid-way
    for _ in range(consumed):
        original.next_batch()
    state = original.state_dict()
    resumed = RankStream(index, 0, 2, batch_size=6, seed=9, window=4)
    resumed.load_state_dict(state)
    for _ in range(15):
        a, b = original.next_batch(), resumed.next_batch()
        assert np.array_equal(a["y"], b["y"]) and np.array_equal(a["x"], b["x"])
    assert resumed.samples_seen == original.samples_seen


def test_cursor_of_another_rank_is_refused(tmp_path):
    index = make_dataset(tmp_path / "ds", 8, rows=1, records_per_shard=4)
    state = RankStream(index, 0, 2, 2, 0, 4).state_dict()
    with pytest.raises(ValueError, match="cannot resume"):
        RankStream(index, 1, 2, 2, 0, 4).load_state_dict(state)


def test_fewer_records_than_ranks_is_an_error(tmp_path):
    index = make_dataset(tmp_path / "ds", 2, rows=1, records_per_shard=1)
    with pytest.raises(DataError, match="fewer than"):
        RankStream(index, 0, 3, 1, 0, 4)


def test_builtin_pack_matches_its_index_and_is_reproducible(tmp_path, cache_dir):
    index = resolve_source("builtin:ring8")
    assert index.num_samples == 2**17 and index.meta["num_classes"] == 8 and index.meta["kind"] == "points"
    total = np.zeros(8, dtype=np.int64)
    for shard in index.shards:
        data = (Path(index.root) / shard.shard).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.num_bytes
        total += shard.class_counts
    assert total.sum() == index.num_samples
    again = resolve_source("builtin:ring8", cache_dir=str(tmp_path))  # packed afresh elsewhere
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in index.shards]


def test_stream_reads_the_builtin_points(cache_dir):
    index = resolve_source("builtin:grid25")
    batch = RankStream(index, 0, 2, batch_size=256, seed=0, window=64).next_batch()
    assert batch["x"].shape == (256, 2) and batch["x"].dtype == np.float32
    assert np.abs(batch["x"]).max() < 5 and set(np.unique(batch["y"])) <= set(range(25))
