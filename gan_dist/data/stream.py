"""Each rank's endless stream of batches from the shards.

How a pass (epoch) is split, so the invariants hold by construction:
- The epoch's record order is the shards in a permutation drawn from
  (seed, epoch), each shard's records in file order.
- Rank r of W takes the contiguous slice [r*N//W, (r+1)*N//W) of that order
  (N records in all; split by global rank, never by local rank). Every record
  is read by exactly one rank per pass, whatever the shard count, and ranks
  may share a shard when there are fewer shards than ranks.
- Within its slice a rank permutes records in windows of `window` records,
  drawn from (seed, epoch, rank, window number): a shuffle that can be
  resumed exactly, unlike a reservoir buffer.
- The stream never ends: when a rank's slice is done it starts the next
  epoch, so every rank runs the same number of steps whatever the data.
  Batches are cut from the rows of consecutive records and may span records
  and epochs.

The cursor (epoch, record, row) is the exact position of the stream: a
stream loaded from a cursor yields exactly what the original would have
yielded next.
"""

from __future__ import annotations

import io
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass

import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from gan_dist.data.index import DatasetIndex
from gan_dist.data.sources import DataError


@dataclass
class Cursor:
    epoch: int = 0
    record: int = 0  # position, in this rank's shuffled slice, of the record being read
    row: int = 0  # rows of that record already taken


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_shards)


def rank_slice(num_records: int, rank: int, world_size: int) -> tuple[int, int]:
    return rank * num_records // world_size, (rank + 1) * num_records // world_size


def shards_of_rank(index: DatasetIndex, rank: int, world_size: int, seed: int, epoch: int = 0) -> list[int]:
    """Shard numbers that rank `rank` reads (at least partly) in `epoch`."""
    order = epoch_shard_order(len(index.shards), seed, epoch)
    bounds = np.cumsum([0] + [index.shards[i].num_records for i in order])
    start, end = rank_slice(index.num_records, rank, world_size)
    return [int(order[j]) for j in range(len(order)) if bounds[j] < end and bounds[j + 1] > start]


def decode_record(sample: dict, fields: dict[str, str]) -> dict[str, np.ndarray]:
    """Raw tar members of one record -> arrays with a leading row dimension."""
    out = {}
    for name, ext in fields.items():
        if ext not in sample:
            raise DataError(f"record {sample.get('__key__')} in {sample.get('__url__')} has no .{ext} member")
        if ext.endswith("npy"):
            out[name] = np.load(io.BytesIO(sample[ext]), allow_pickle=False)
        else:
            raise DataError(f"no decoder for .{ext} members")
    return out


class _ShardReader:
    """Reads records by position in an epoch's order, keeping one shard open
    so that consecutive reads continue without reopening."""

    def __init__(self, index: DatasetIndex):
        self.index = index
        self._open: list | None = None  # [shard number, next record in it, iterator, stream]

    def read(self, order: np.ndarray, bounds: np.ndarray, start: int, end: int) -> list[dict]:
        out: list[dict] = []
        pos = start
        while pos < end:
            j = bisect_right(bounds, pos) - 1
            take = min(end, int(bounds[j + 1])) - pos
            out += self._take(int(order[j]), pos - int(bounds[j]), take)
            pos += take
        return out

    def _take(self, shard: int, offset: int, count: int) -> list[dict]:
        if self._open is None or self._open[0] != shard or self._open[1] != offset:
            self.close()
            url = self.index.url(shard)
            stream = gopen(url, "rb")
            records = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            self._open = [shard, 0, records, stream]
            self._skip(offset)
        records = [self._next() for _ in range(count)]
        return records

    def _skip(self, count: int) -> None:
        for _ in range(count):
            self._next()

    def _next(self) -> dict:
        shard, _, records, _ = self._open
        try:
            record = next(records)
        except StopIteration:
            raise DataError(f"{self.index.url(shard)} has fewer records than its index says") from None
        self._open[1] += 1
        return record

    def close(self) -> None:
        if self._open is not None:
            self._open[3].close()
            self._open = None


class RankStream:
    """The batches of one rank: `next_batch()` returns {"x": [B, ...], "y": [B]} arrays."""

    def __init__(self, index: DatasetIndex, rank: int, world_size: int, batch_size: int, seed: int,
                 window: int):
        if index.num_records < world_size:
            raise DataError(f"the dataset has {index.num_records} records, fewer than the {world_size} ranks")
        self.index, self.rank, self.world_size = index, rank, world_size
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.fields = index.meta["fields"]
        self.slice_start, self.slice_end = rank_slice(index.num_records, rank, world_size)
        self.cursor = Cursor()
        self.samples_seen = 0
        self.wait_seconds = 0.0  # time spent inside next_batch, for the data-wait metric
        self._reader = _ShardReader(index)
        self._records = None  # generator of decoded records from the cursor on
        self._current: dict | None = None

    @property
    def slice_len(self) -> int:
        return self.slice_end - self.slice_start

    def next_batch(self) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        parts: dict[str, list] = {name: [] for name in self.fields}
        need = self.batch_size
        while need:
            if self._current is None:
                if self._records is None:
                    self._records = self._iter_records(self.cursor.epoch, self.cursor.record)
                self._current = next(self._records)
            rows = len(next(iter(self._current.values())))
            take = min(need, rows - self.cursor.row)
            for name, array in self._current.items():
                parts[name].append(array[self.cursor.row:self.cursor.row + take])
            self.cursor.row += take
            need -= take
            if self.cursor.row == rows:
                self._advance()
        self.samples_seen += self.batch_size
        batch = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        self.wait_seconds += time.perf_counter() - t0
        return batch

    def _advance(self) -> None:
        self._current = None
        self.cursor.row = 0
        self.cursor.record += 1
        if self.cursor.record == self.slice_len:
            self.cursor.epoch += 1
            self.cursor.record = 0

    def _iter_records(self, epoch: int, position: int):
        """Decoded records of this rank's slice, from (epoch, position) on, forever."""
        while True:
            order = epoch_shard_order(len(self.index.shards), self.seed, epoch)
            bounds = np.cumsum([0] + [self.index.shards[i].num_records for i in order])
            for w in range(position // self.window, -(-self.slice_len // self.window)):
                lo, hi = w * self.window, min(self.slice_len, (w + 1) * self.window)
                raw = self._reader.read(order, bounds, self.slice_start + lo, self.slice_start + hi)
                perm = np.random.default_rng([self.seed, epoch, self.rank, w]).permutation(hi - lo)
                for k in range(max(position - lo, 0), hi - lo):
                    yield decode_record(raw[perm[k]], self.fields)
            epoch, position = epoch + 1, 0

    # Checkpointing --------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"cursor": asdict(self.cursor), "samples_seen": self.samples_seen,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size or state["rank"] != self.rank:
            raise ValueError(f"data cursor of rank {state['rank']}/{state['world_size']} "
                             f"cannot resume rank {self.rank}/{self.world_size}")
        self.cursor = Cursor(**state["cursor"])
        self.samples_seen = state["samples_seen"]
        self._records, self._current = None, None

    def close(self) -> None:
        self._reader.close()
