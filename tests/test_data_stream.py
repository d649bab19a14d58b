"""Rank streams: exactly-once splits, equal steps, exact resume, loader workers, bad data."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_helpers import id_dataset, image_dataset, random_images, replace_member, take_rows, truncate
from gan_dist.data import tar
from gan_dist.data.errors import DataError
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = pytest.mark.unit

# Shard sizes in records; 1 shard is fewer than the ranks and workers below.
SHARD_LAYOUTS = {1: [13], 3: [5, 9, 2], 7: [4, 1, 6, 3, 3, 5, 2]}


def epoch_rows(stream: RankStream) -> np.ndarray:
    """The ids a stream yields in its first epoch (batch size 1, so the cursor
    says which epoch each row came from)."""
    ids = []
    while stream.cursor.epoch == 0:
        ids.append(stream.next_batch()["y"][0])
    return np.array(ids)


@pytest.mark.parametrize("num_shards", sorted(SHARD_LAYOUTS))
def test_every_sample_once_per_pass_for_any_shards_ranks_workers(num_shards, tmp_path):
    index, total = id_dataset(tmp_path, SHARD_LAYOUTS[num_shards])
    for world_size in (1, 2, 3, 5):
        for workers in (0, 2, 3):
            per_rank, slices = [], []
            for rank in range(world_size):
                stream = RankStream(index, rank, world_size, 1, seed=7, window=2, num_workers=workers,
                                    processes=False)
                per_rank.append(epoch_rows(stream))
                slices.append(stream.slice_len)
                # equal steps: the stream goes on past its slice, with full batches, forever
                assert all(len(stream.next_batch()["y"]) == 1 for _ in range(2 * total))
            seen = np.concatenate(per_rank)
            assert sorted(seen) == list(range(total)), (num_shards, world_size, workers)
            assert max(slices) - min(slices) <= 1  # records split as evenly as they can be


def test_order_depends_on_seed_and_epoch_not_on_worker_processes(tmp_path):
    index, total = id_dataset(tmp_path, SHARD_LAYOUTS[7])

    def ids(seed: int, processes: bool, n: int = 2 * total) -> np.ndarray:
        stream = RankStream(index, 1, 2, 4, seed=seed, window=3, num_workers=2, processes=processes)
        out = np.concatenate(take_rows(stream, n // 4))
        stream.close()
        return out

    inline = ids(0, processes=False)
    np.testing.assert_array_equal(inline, ids(0, processes=True))  # real loader processes, same order
    assert not np.array_equal(inline, ids(1, processes=False))
    # a new epoch reads the same samples in another order (one rank: its slice is everything)
    stream = RankStream(index, 0, 1, 1, seed=0, window=3, num_workers=2, processes=False)
    first = epoch_rows(stream)
    second = [stream.next_batch()["y"][0] for _ in range(len(first))]
    assert sorted(first) == sorted(second) and list(first) != second


@pytest.mark.parametrize("workers,processes", [(0, False), (3, False), (2, True)])
def test_resume_from_cursor_yields_what_the_stream_would_have(workers, processes, tmp_path):
    index, total = id_dataset(tmp_path, SHARD_LAYOUTS[3])

    def stream() -> RankStream:
        return RankStream(index, 0, 2, 5, seed=3, window=2, num_workers=workers, processes=processes)

    for stop in (1, 3, 7, 16):  # batches before the checkpoint: inside records, across windows and epochs
        original = stream()
        take_rows(original, stop)
        state = original.state_dict()
        expected = take_rows(original, 9)
        original.close()
        resumed = stream()
        resumed.load_state_dict(state)
        assert [r.tolist() for r in take_rows(resumed, 9)] == [r.tolist() for r in expected], stop
        assert resumed.samples_seen == (stop + 9) * 5
        resumed.close()


def test_cursor_from_other_loader_layout_restarts_at_next_epoch(tmp_path, caplog):
    index, _ = id_dataset(tmp_path, SHARD_LAYOUTS[3])
    a = RankStream(index, 0, 1, 4, seed=0, window=2, num_workers=2, processes=False)
    take_rows(a, 3)
    b = RankStream(index, 0, 1, 4, seed=0, window=2, num_workers=3, processes=False)
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        b.load_state_dict(a.state_dict())
    assert b.cursor.epoch == 1 and b.cursor.record == 0 and "restarts at epoch 1" in caplog.text


# Bad data --------------------------------------------------------------------------------

def labels_by_key(n: int) -> np.ndarray:
    return random_images(n)[1]


def read_epoch(root, **kwargs) -> tuple[RankStream, np.ndarray]:
    """One rank, batch 1: the labels of one epoch, and the stream (for its counters)."""
    stream = RankStream(resolve_source(str(root)), 0, 1, 1, seed=0, window=4, **kwargs)
    ys = epoch_rows(stream)
    stream.close()
    return stream, ys


def test_corrupt_image_is_skipped_counted_and_warned(tmp_path, caplog):
    image_dataset(tmp_path, 24, per_shard=8)
    replace_member(tmp_path, "shard-000001.tar", "00000010.png", b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        stream, ys = read_epoch(tmp_path)
    assert stream.corrupt_samples == 1 and len(ys) == 23 and stream.samples_seen == 23
    assert "00000010" in caplog.text or "shard-000001" in caplog.text
    expected = np.delete(labels_by_key(24), 10)
    assert sorted(ys) == sorted(expected)
    assert stream.state_dict()["corrupt_samples"] == 1


@pytest.mark.parametrize("verify", [False, True])
def test_truncated_shard(verify, tmp_path):
    image_dataset(tmp_path, 24, per_shard=8)
    truncate(tmp_path / "shard-000002.tar", 0.45)
    stream, ys = read_epoch(tmp_path, verify=verify, max_corrupt_fraction=0.5)
    # streamed, or read whole and found damaged (checksum mismatch): either way the
    # records before the cut are used and only the rest is skipped
    readable = len({n.split(".")[0] for n in _members_before_cut(tmp_path / "shard-000002.tar")})
    assert 0 < stream.corrupt_samples < 8 and len(ys) == 24 - stream.corrupt_samples
    assert stream.corrupt_samples >= 8 - readable


def _members_before_cut(path):
    names = []
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                tar.extractfile(member).read()
                names.append(member.name)
    except (tarfile.TarError, OSError):
        pass
    return names


def test_missing_shard_and_checksum_mismatch_are_counted(tmp_path, caplog):
    image_dataset(tmp_path, 40, per_shard=8)
    (tmp_path / "shard-000000.tar").unlink()
    data = bytearray((tmp_path / "shard-000003.tar").read_bytes())
    data[600] ^= 0xFF  # in the padding after the first record's label: harmless
    data[member_offsets(data, ".png")[0] + 512 + 100] ^= 0xFF  # inside the first image
    (tmp_path / "shard-000003.tar").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        stream, ys = read_epoch(tmp_path, max_corrupt_fraction=0.5)
    # the missing shard costs its 8 samples; the damaged one only the image the byte fell in
    assert stream.corrupt_samples == 9 and len(ys) == 31
    assert "shard-000003.tar is damaged (checksum mismatch" in caplog.text


def member_offsets(tar_bytes: bytes, suffix: str) -> list[int]:
    """Offsets of the USTAR headers of members whose names end with `suffix`."""
    return [o for o in range(0, len(tar_bytes), 512) if tar_bytes[o + 257:o + 262] == b"ustar"
            and tar_bytes[o:o + 100].split(b"\0")[0].endswith(suffix.encode())]


@pytest.mark.parametrize("where", ["header", "payload"])
def test_flipped_byte_in_a_damaged_shard_costs_one_record(where, tmp_path):
    """A flipped byte in a member's tar header (its checksum fails: the reader skips
    to the next valid header) or inside its image loses that record only."""
    image_dataset(tmp_path, 16, per_shard=16)
    path = tmp_path / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    png_header = member_offsets(data, ".png")[8]  # a record in the middle of the shard
    data[png_header + 20 if where == "header" else png_header + 512 + 200] ^= 0x55
    path.write_bytes(bytes(data))
    stream, ys = read_epoch(tmp_path, max_corrupt_fraction=0.5)
    assert stream.corrupt_samples == 1 and len(ys) == 15


def test_too_many_bad_samples_stop_with_a_clear_error(tmp_path):
    index = image_dataset(tmp_path, 24, per_shard=8)
    (tmp_path / "shard-000001.tar").unlink()
    stream = RankStream(index, 0, 1, 4, seed=0, window=4, max_corrupt_fraction=0.2)
    with pytest.raises(DataError, match=r"8 bad samples .* more than data.max_corrupt_fraction=0.2"):
        for _ in range(12):
            stream.next_batch()
    # under the limit the run goes on, with full batches and equal steps
    tolerant = RankStream(index, 0, 1, 4, seed=0, window=4, max_corrupt_fraction=0.5)
    assert all(len(tolerant.next_batch()["y"]) == 4 for _ in range(12))


def test_nothing_readable_is_an_error_not_a_hang(tmp_path):
    index = image_dataset(tmp_path, 8, per_shard=8)
    (tmp_path / "shard-000000.tar").unlink()
    stream = RankStream(index, 0, 1, 4, seed=0, window=4, max_corrupt_fraction=1.0)
    with pytest.raises(DataError, match="without one readable sample"):
        stream.next_batch()


def test_bad_data_count_is_exact_across_resume(tmp_path):
    image_dataset(tmp_path, 40, per_shard=8)
    (tmp_path / "shard-000002.tar").unlink()
    index = resolve_source(str(tmp_path))

    def stream() -> RankStream:
        return RankStream(index, 1, 2, 3, seed=5, window=4, num_workers=2, processes=False,
                          max_corrupt_fraction=0.5)

    for stop in range(0, 14, 3):
        original = stream()
        take_rows(original, stop)
        state = original.state_dict()
        expected = take_rows(original, 10)
        resumed = stream()
        resumed.load_state_dict(state)
        assert [r.tolist() for r in take_rows(resumed, 10)] == [r.tolist() for r in expected]
        assert resumed.corrupt_samples == original.corrupt_samples
    assert original.corrupt_samples >= 8  # the missing shard was passed at least once


LONG = "d" * 120 + "/" + "long" * 20  # USTAR's prefix field; GNU and pax long names


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_groups_records_like_webdataset(fmt, tmp_path):
    """Our fast reader against webdataset's on tars as other tools write them:
    long names, nested folders, multi-dot extensions, metadata members."""
    members = {"a/b/0001.png": b"x" * 700, "a/b/0001.cls": b"3", "__meta__.json": b"{}", "__skip__/x.json": b"{}",
               LONG + ".seg.npy": b"y" * 513, LONG + ".cls": b"1", "0002.txt": b""}
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as out:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        theirs = [{k: v for k, v in r.items() if k != "__url__"}
                  for r in group_by_keys(tar_file_expander([{"url": "", "stream": f}]))]
    ours_stream = [{k: v for k, v in r.items() if k != "__url__"} for r in tar.records(open(path, "rb"))]
    ours_bytes = [{k: v for k, v in r.items() if k != "__url__"} for r in tar.records(path.read_bytes())]
    assert ours_stream == ours_bytes == theirs and len(theirs) == 4
    with pytest.raises(tar.TarError, match=r"truncated member a/b/0001.png \(488 of 700 bytes\)"):
        list(tar.records(path.read_bytes()[:1000]))  # inside the first image
