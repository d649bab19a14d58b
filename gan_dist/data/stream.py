"""Each rank's endless stream of batches from the shards.

How a pass (epoch) is split, so the invariants hold by construction:
- The epoch's record order is the shards in a permutation drawn from
  (seed, epoch), each shard's records in file order.
- Rank r of W takes the contiguous slice [r*N//W, (r+1)*N//W) of that order
  (N records in all; split by global rank, never by local rank). Every record
  is read by exactly one rank per pass, whatever the shard count, and ranks
  may share a shard when there are fewer shards than ranks.
- A rank's slice is split again, contiguously, among its K loader workers
  (K = max(1, data.num_workers)), so each worker reads its records front to
  back and no record is read twice, however few shards there are.
- Each worker cuts its part into windows of `window` records and permutes
  each window with a generator drawn from (seed, epoch, rank, window number):
  a shuffle that can be resumed exactly, unlike a reservoir buffer. The rank
  takes the workers' windows round-robin, so the order depends only on
  (seed, epoch, rank, K, window), never on which worker is faster.
- The stream never ends: when a rank's slice is done it starts the next
  epoch, so every rank runs the same number of steps whatever the data.
  Batches are cut from the rows of consecutive records and may span records
  and epochs.

The cursor (epoch, record, row) is the exact position of the stream, counted
in the order the rank takes records: a stream loaded from a cursor yields
exactly what the original would have yielded next.

Bad data (an unreadable record, a truncated tar, a missing shard) is skipped
with a warning and counted in `corrupt_samples` when the cursor passes it, so
the count is exact across resumes. A skipped record yields no rows; the
stream simply cuts the batch from the records after it. One bad sample costs
one sample: a shard whose checksum fails is reported as damaged and read
record by record, so a flipped byte loses the record it falls in, not the
shard. Every remote read has a time limit (data.fs), so a stalled server
ends in bad records and then an error, never in a hang.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import math
import multiprocessing as mp
import os
import queue as queue_lib
import time
import traceback
from bisect import bisect_right
from dataclasses import asdict, dataclass, field

import numpy as np

from gan_dist.data import fs, images, tar
from gan_dist.data.errors import DataError
from gan_dist.data.index import DatasetIndex
from gan_dist.data.parallel import mp_context

log = logging.getLogger("gan_dist.data")

# Chunks each loader worker may have decoded ahead of the trainer.
PREFETCH = 2


@dataclass
class Cursor:
    epoch: int = 0
    record: int = 0  # position, in this rank's emitted order, of the record being read
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


# Layout of a rank's slice -----------------------------------------------------------

class Layout:
    """A rank's slice of `length` records, split among `workers` loader workers
    and cut into windows; `order` lists the windows (worker, number) in the
    order the rank takes them, the same every epoch."""

    def __init__(self, length: int, workers: int, window: int):
        self.length, self.workers, self.window = length, workers, window
        self.parts = [k * length // workers for k in range(workers + 1)]
        self.counts = [math.ceil((self.parts[k + 1] - self.parts[k]) / window) for k in range(workers)]
        self.order = [(k, r) for r in range(max(self.counts)) for k in range(workers) if r < self.counts[k]]
        self.emit_of = [[0] * n for n in self.counts]  # emitted position of worker k's window r
        for e, (k, r) in enumerate(self.order):
            self.emit_of[k][r] = e
        sizes = [self.span(k, r)[1] - self.span(k, r)[0] for k, r in self.order]
        self.first = np.cumsum([0] + sizes)  # cursor position of each emitted window's first record

    def span(self, k: int, r: int) -> tuple[int, int]:
        """Worker k's window r, as positions in the rank's slice."""
        lo = self.parts[k] + r * self.window
        return lo, min(self.parts[k + 1], lo + self.window)

    def locate(self, record: int) -> tuple[int, int]:
        """(emitted window, offset in it) of cursor position `record`."""
        e = bisect_right(self.first, record) - 1
        return e, record - int(self.first[e])

    def starts(self, epoch: int, record: int) -> list[tuple[int, int, int]]:
        """Where each worker resumes, as (epoch, window number, offset), for a
        stream whose cursor is at (epoch, record)."""
        e, offset = self.locate(record)
        out = []
        for k in range(self.workers):
            later = [r for r in range(self.counts[k]) if self.emit_of[k][r] >= e]
            if not later:
                out.append((epoch + 1, 0, 0))
            else:
                out.append((epoch, later[0], offset if self.emit_of[k][later[0]] == e else 0))
        return out


# Reading records ----------------------------------------------------------------------

@dataclass
class Bad:
    """A record that could not be read: how many samples it held, and why."""
    samples: int
    reason: str


def _expected_samples(info, first: int, count: int) -> int:
    """Samples in records [first, first+count) of a shard, as the index says
    (exact when records hold equal numbers of samples)."""
    total, records = info.num_samples, max(info.num_records, 1)
    return (first + count) * total // records - first * total // records


class _OpenShard:
    def __init__(self, number: int):
        self.number, self.position = number, 0
        self.damaged = False  # its checksum failed: every record is checked as it is decoded
        self.records = None  # iterator of raw records
        self.stream = None
        self.broken = ""  # why the rest of this shard cannot be read


class ShardReader:
    """Reads records by position in an epoch's order, keeping one shard open
    so that consecutive reads continue without reopening.

    With `verify`, a shard is read whole and its sha256 checked against the
    index before any record is used (memory: one shard); without, it is
    streamed."""

    def __init__(self, index: DatasetIndex, verify: bool = True):
        self.index, self.verify = index, verify
        self._open: _OpenShard | None = None
        self.damaged: set[str] = set()  # shards whose checksum failed (read record by record)

    def read(self, order: np.ndarray, bounds: np.ndarray, start: int, end: int) -> list:
        """Raw records (dicts of tar members) or `Bad`s at positions [start, end)."""
        out: list = []
        pos = start
        while pos < end:
            j = bisect_right(bounds, pos) - 1
            take = min(end, int(bounds[j + 1])) - pos
            out += self._take(int(order[j]), pos - int(bounds[j]), take)
            pos += take
        return out

    def _take(self, shard: int, offset: int, count: int) -> list:
        if self._open is None or self._open.number != shard or self._open.position > offset:
            self.close()
            self._open = self._start(shard)
        while self._open.position < offset:
            self._next()
        return [self._next() for _ in range(count)]

    def _start(self, shard: int) -> _OpenShard:
        url, info = self.index.url(shard), self.index.shards[shard]
        opened = _OpenShard(shard)
        try:
            if self.verify:
                data = fs.read_bytes(url)
                intact = hashlib.sha256(data).hexdigest() == info.sha256
                if not intact:
                    # One bad sample costs one sample: read the damaged shard record by record
                    # (headers checked, resynchronised past a bad one); what does not decode is
                    # skipped and counted like any bad record.
                    self.damaged.add(url)
                    opened.damaged = True
                    log.warning("shard %s is damaged (checksum mismatch: %d bytes, the index says %d): "
                                "reading it record by record and skipping what does not decode",
                                url, len(data), info.num_bytes)
                opened.records = tar.records(data, url, check=not intact)  # intact: no need to check headers
            else:
                opened.stream = fs.open_stream(url)
                opened.records = tar.records(opened.stream, url)
        except OSError as exc:  # FileNotFoundError, HTTP and S3 errors
            opened.broken = f"{url}: cannot read ({type(exc).__name__}: {exc})"
        return opened

    def _next(self):
        shard = self._open
        info = self.index.shards[shard.number]
        position = shard.position
        shard.position += 1
        if not shard.broken:
            try:
                record = next(shard.records)
                record["__expect__"] = _expected_samples(info, position, 1)
                if shard.damaged:
                    record["__damaged__"] = True  # decoded strictly: its bytes are suspect
                return record
            except StopIteration:
                shard.broken = f"{self.index.url(shard.number)}: {position} records, index says {info.num_records}"
            except (OSError, ValueError) as exc:  # tar.TarError is a ValueError
                shard.broken = f"{self.index.url(shard.number)}: unreadable tar ({exc})"
        return Bad(_expected_samples(info, position, 1), shard.broken)

    def close(self) -> None:
        if self._open is not None and self._open.stream is not None:
            self._open.stream.close()
        self._open = None


class BadRecord(ValueError):
    """One record cannot be decoded."""


NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    fields = ast.literal_eval(header.decode("latin1"))
    dtype = np.lib.format.descr_to_dtype(fields["descr"])
    if dtype.hasobject:
        raise ValueError("object arrays are not loaded (they would need pickle)")
    return dtype, tuple(fields["shape"]), bool(fields["fortran_order"])


def load_npy(data: bytes) -> np.ndarray:
    """np.load of one .npy member (read-only), its header's parse cached: a dataset's
    records share a few headers, and parsing one costs more than reading 256 rows."""
    if data[:6] != NPY_MAGIC:
        raise ValueError("not a .npy file")
    size = 2 if data[6] == 1 else 4  # format 1.0 has a 2-byte header length, 2.0 and 3.0 4 bytes
    start = 8 + size + int.from_bytes(data[8:8 + size], "little")
    dtype, shape, fortran = _npy_header(bytes(data[8 + size:start]))
    array = np.frombuffer(data, dtype, count=math.prod(shape), offset=start)
    return array.reshape(shape, order="F" if fortran else "C")


class RecordDecoder:
    """Raw tar members of one record -> arrays with a leading row dimension.

    `fields` maps an output name to a member extension (or several, separated
    by ';', the first present wins): image extensions decode to uint8 [1, H, W, C]
    (made float CHW in [-1, 1] per batch), `npy` loads an array of rows, `cls`
    is an integer label."""

    def __init__(self, fields: dict[str, str], meta: dict):
        self.fields = {name: spec.split(";") for name, spec in fields.items()}
        self.image_shape = tuple(meta["sample_shape"]) if meta.get("kind") == "image" else None
        self.hwc_shape = (*self.image_shape[1:], self.image_shape[0]) if self.image_shape else None
        for name, exts in self.fields.items():
            for ext in exts:
                if not (ext in images.SHARD_EXTS or ext.endswith("npy") or ext == "cls"):
                    raise DataError(f"data field {name}: no decoder for .{ext} members")

    def image_fields(self) -> list[str]:
        return [name for name, exts in self.fields.items() if exts[0] in images.SHARD_EXTS]

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        out = {}
        for name, exts in self.fields.items():
            ext = next((e for e in exts if e in sample), None)
            if ext is None:
                raise BadRecord(f"record {sample.get('__key__')} has no .{' or .'.join(exts)} member")
            out[name] = self._decode(sample[ext], ext, strict=sample.get("__damaged__", False))
        rows = {len(a) for a in out.values()}
        if len(rows) > 1:
            raise BadRecord(f"record {sample.get('__key__')}: fields have different row counts {sorted(rows)}")
        return out

    def _decode(self, data: bytes, ext: str, strict: bool = False) -> np.ndarray:
        """`strict` (a record of a damaged shard) also checks the format's own
        checksums (PNG's CRCs), which a plain decode does not read."""
        try:
            if strict:
                images.verify(data, ext)
            if ext.endswith("npy"):
                return load_npy(data)
            if ext == "cls":
                return np.array([int(data)], dtype=np.int64)
            pixels = images.decode(data, ext, self.image_shape[0])
        except Exception as exc:  # Pillow and NumPy raise many types for bad bytes
            raise BadRecord(f".{ext} member: {type(exc).__name__}: {exc}") from None
        if pixels.shape != self.hwc_shape:
            raise BadRecord(f"image of shape {list(pixels.shape)} (HWC), the dataset's is "
                            f"{list(self.image_shape)} (CHW)")
        return pixels[None]  # HWC: made CHW once per batch, in the float conversion


@dataclass
class Chunk:
    """One window's decoded records, in the order the rank takes them."""
    epoch: int
    emit: int  # the window's position in the rank's order
    first: int  # offset, in the window, of the first record here
    arrays: dict[str, np.ndarray]  # rows of the good records, concatenated
    ends: np.ndarray  # cumulative rows at the end of each record
    bad: np.ndarray  # samples lost in each record (0: good)
    notes: dict[int, str] = field(default_factory=dict)  # why record i was bad


def _make_chunk(epoch: int, emit: int, first: int, items: list, decode: RecordDecoder) -> Chunk:
    parts: dict[str, list] = {name: [] for name in decode.fields}
    rows, bad, notes = [], [], {}
    for i, item in enumerate(items):
        try:
            if isinstance(item, Bad):
                raise BadRecord(item.reason)
            arrays = decode(item)
        except BadRecord as exc:
            expect = item.samples if isinstance(item, Bad) else item["__expect__"]
            rows.append(0), bad.append(expect)
            notes[i] = str(exc) if isinstance(item, Bad) else f"{item.get('__url__')}: {exc}"
            continue
        for name, array in arrays.items():
            parts[name].append(array)
        rows.append(len(next(iter(arrays.values()))))
        bad.append(0)
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items() if chunks}
    return Chunk(epoch, emit, first, arrays, np.cumsum(rows, dtype=np.int64), np.array(bad, dtype=np.int64), notes)


@dataclass
class WorkerSpec:
    """What a loader worker needs to produce its chunks (picklable)."""
    index: DatasetIndex
    rank: int
    seed: int
    slice_start: int
    layout: Layout
    verify: bool
    # The trainer's environment (storage endpoints, credentials) at the time the
    # workers start: forkserver children otherwise see the server's, from its start.
    env: dict = field(default_factory=dict)


def produce(spec: WorkerSpec, k: int, epoch: int, r: int, offset: int):
    """Worker k's chunks from (epoch, window r, offset) on, forever."""
    reader = ShardReader(spec.index, spec.verify)
    decode = RecordDecoder(spec.index.meta["fields"], spec.index.meta)
    layout = spec.layout
    try:
        while True:
            order = epoch_shard_order(len(spec.index.shards), spec.seed, epoch)
            bounds = np.cumsum([0] + [spec.index.shards[i].num_records for i in order])
            for r in range(r, layout.counts[k]):
                lo, hi = layout.span(k, r)
                raw = reader.read(order, bounds, spec.slice_start + lo, spec.slice_start + hi)
                e = layout.emit_of[k][r]
                perm = np.random.default_rng([spec.seed, epoch, spec.rank, e]).permutation(hi - lo)
                yield _make_chunk(epoch, e, offset, [raw[perm[i]] for i in range(offset, hi - lo)], decode)
                offset = 0
            epoch, r = epoch + 1, 0
    finally:
        reader.close()


# Loader worker processes ------------------------------------------------------------------

@dataclass
class _Failure:
    worker: int
    kind: str
    message: str


def _worker_main(spec: WorkerSpec, k: int, start: tuple[int, int, int], out, stop) -> None:
    """A loader worker process: push chunks until stopped or orphaned."""
    out.cancel_join_thread()  # exit promptly even if the trainer stopped reading
    os.environ.update(spec.env)
    parent = mp.parent_process()
    try:
        for chunk in produce(spec, k, *start):
            while True:
                if stop.is_set() or (parent is not None and not parent.is_alive()):
                    return
                try:
                    out.put(chunk, timeout=1.0)
                    break
                except queue_lib.Full:
                    continue
    except Exception as exc:  # reported to the trainer, which raises it
        out.put(_Failure(k, type(exc).__name__, f"{exc}\n{traceback.format_exc()}"))


class _WorkerProcess:
    def __init__(self, ctx, spec: WorkerSpec, k: int, start: tuple[int, int, int]):
        self.k = k
        self.queue = ctx.Queue(maxsize=PREFETCH)
        self.stop = ctx.Event()
        self.process = ctx.Process(target=_worker_main, args=(spec, k, start, self.queue, self.stop),
                                   name=f"gan-dist-loader-{k}", daemon=True)
        self.process.start()

    def __next__(self) -> Chunk:
        while True:
            try:
                item = self.queue.get(timeout=2.0)
            except queue_lib.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"data loader worker {self.k} died (exit code {self.process.exitcode})")
                continue
            if isinstance(item, _Failure):
                error = DataError if item.kind == "DataError" else RuntimeError
                raise error(f"data loader worker {item.worker}: {item.kind}: {item.message}")
            return item

    def close(self) -> None:
        # The worker only reads: stopping it mid-window loses nothing.
        self.stop.set()
        self.process.terminate()
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.queue.close()


# The rank's stream ---------------------------------------------------------------------

class RankStream:
    """The batches of one rank: `next_batch()` returns {"x": [B, ...], "y": [B]} arrays
    (images as float32 [B, C, H, W] in [-1, 1]; "y" only for labelled data).

    num_workers: loader worker processes (0 reads in this process).
    max_corrupt_fraction: stop with a DataError once more than this fraction
      of the samples passed (at least one epoch's slice) were bad.
    verify: check each shard's sha256 before using it.
    processes: False runs the loader workers' code in this process, in the
      same order (for tests and debugging).
    """

    def __init__(self, index: DatasetIndex, rank: int, world_size: int, batch_size: int, seed: int,
                 window: int, *, num_workers: int = 0, max_corrupt_fraction: float = 0.05,
                 verify: bool = True, processes: bool = True):
        if index.num_records < world_size:
            raise DataError(f"the dataset has {index.num_records} records, fewer than the {world_size} ranks")
        self.index, self.rank, self.world_size = index, rank, world_size
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.max_corrupt_fraction, self.verify, self.processes = max_corrupt_fraction, verify, processes
        self.slice_start, self.slice_end = rank_slice(index.num_records, rank, world_size)
        self.layout = Layout(self.slice_len, min(max(1, num_workers), self.slice_len), window)
        self.num_workers = num_workers
        self._decoder = RecordDecoder(index.meta["fields"], index.meta)
        self._image_fields = self._decoder.image_fields()
        self.slice_samples = index.num_samples * self.slice_len / index.num_records
        self.cursor = Cursor()
        self.samples_seen = 0
        self.corrupt_samples = 0
        self.wait_seconds = 0.0  # time spent inside next_batch, for the data-wait metric
        self._sources = None  # one chunk iterator per loader worker, started lazily at the cursor
        self._chunk: Chunk | None = None
        self._base = 0  # cursor position of self._chunk's first record
        self._dry = 0  # records passed in a row without a readable sample
        self._last_note = ""  # the last bad-data warning given

    @property
    def slice_len(self) -> int:
        return self.slice_end - self.slice_start

    def next_batch(self) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        parts: dict[str, list] = {name: [] for name in self._decoder.fields}
        need = self.batch_size
        while need:
            chunk = self._chunk or self._fetch()
            need -= self._take(chunk, need, parts)
        self.samples_seen += self.batch_size
        # a batch within one chunk is a slice of it: no copy before the float conversion
        batch = {name: chunks[0] if len(chunks) == 1 else np.concatenate(chunks) for name, chunks in parts.items()}
        for name in self._image_fields:  # once per batch, not per image
            batch[name] = images.to_unit_float(batch[name])
        self._check_corrupt_fraction()
        self.wait_seconds += time.perf_counter() - t0
        return batch

    def _take(self, chunk: Chunk, need: int, parts: dict[str, list]) -> int:
        """Take up to `need` rows from the chunk at the cursor; advance the cursor."""
        i = self.cursor.record - self._base
        start = (int(chunk.ends[i - 1]) if i else 0) + self.cursor.row
        stop = min(start + need, int(chunk.ends[-1]))
        if stop > start:
            for name, array in chunk.arrays.items():
                parts[name].append(array[start:stop])
        j = int(np.searchsorted(chunk.ends, stop, side="right"))  # records before j are done
        self._pass(chunk, i, j, stop > start)
        self.cursor.record += j - i
        self.cursor.row = stop - (int(chunk.ends[j - 1]) if j else 0) if j < len(chunk.ends) else 0
        if j == len(chunk.ends):
            self._chunk = None
            if self.cursor.record == self.slice_len:
                self.cursor.epoch, self.cursor.record = self.cursor.epoch + 1, 0
        return stop - start

    def _pass(self, chunk: Chunk, i: int, j: int, got_rows: bool) -> None:
        """Count and report the bad records among [i, j) as the cursor passes them."""
        for b in range(i, j):
            if chunk.bad[b]:
                self.corrupt_samples += int(chunk.bad[b])
                if chunk.notes.get(b) != self._last_note:  # a broken shard is reported once, not per record
                    self._last_note = chunk.notes.get(b)
                    log.warning("rank %d skipped bad data (%d samples so far): %s", self.rank,
                                self.corrupt_samples, self._last_note)
        self._dry = 0 if got_rows else self._dry + (j - i)
        if self._dry > self.slice_len:
            raise DataError(f"rank {self.rank} read a whole epoch of its slice without one readable sample "
                            f"(last problem: {chunk.notes.get(j - 1, 'records with no rows')})")

    def _check_corrupt_fraction(self) -> None:
        passed = max(self.samples_seen + self.corrupt_samples, self.slice_samples)
        if self.corrupt_samples > self.max_corrupt_fraction * passed:
            raise DataError(f"rank {self.rank}: {self.corrupt_samples} bad samples in "
                            f"{self.samples_seen + self.corrupt_samples} read, more than "
                            f"data.max_corrupt_fraction={self.max_corrupt_fraction:g} (see the warnings above)")

    def _fetch(self) -> Chunk:
        if self._sources is None:
            self._sources = self._start_sources()
        e, offset = self.layout.locate(self.cursor.record)
        chunk = next(self._sources[self.layout.order[e][0]])
        assert (chunk.epoch, chunk.emit, chunk.first) == (self.cursor.epoch, e, offset), "loader order broken"
        self._chunk, self._base = chunk, self.cursor.record
        return chunk

    def _start_sources(self) -> list:
        spec = WorkerSpec(self.index, self.rank, self.seed, self.slice_start, self.layout, self.verify,
                          dict(os.environ))
        starts = self.layout.starts(self.cursor.epoch, self.cursor.record)
        if self.num_workers == 0 or not self.processes:
            return [produce(spec, k, *start) for k, start in enumerate(starts)]
        ctx = mp_context()
        return [_WorkerProcess(ctx, spec, k, start) for k, start in enumerate(starts)]

    # Checkpointing --------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"cursor": asdict(self.cursor), "samples_seen": self.samples_seen,
                "corrupt_samples": self.corrupt_samples, "rank": self.rank, "world_size": self.world_size,
                "loader_workers": self.layout.workers, "window": self.window}

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size or state["rank"] != self.rank:
            raise ValueError(f"data cursor of rank {state['rank']}/{state['world_size']} "
                             f"cannot resume rank {self.rank}/{self.world_size}")
        self.close()
        self.samples_seen = state["samples_seen"]
        self.corrupt_samples = state.get("corrupt_samples", 0)
        self.cursor = Cursor(**state["cursor"])
        layout = (state.get("loader_workers", self.layout.workers), state.get("window", self.window))
        if layout != (self.layout.workers, self.window):
            # The order within an epoch depends on both: continue at the next epoch, exactly-once again.
            log.warning("data cursor saved with %d loader worker(s) and window %d, now %d and %d: "
                        "rank %d restarts at epoch %d", *layout, self.layout.workers, self.window,
                        self.rank, self.cursor.epoch + 1)
            self.cursor = Cursor(epoch=self.cursor.epoch + 1)

    def resized_state(self, states: list[dict]) -> dict:
        """This rank's state continuing from the cursors of every rank of another world size
        (`states`, one per old rank): the pass goes on at the same global position, split over
        the new ranks. The position is the old ranks' mean progress through their slices, in
        epochs (records at a row's resolution); each new rank starts its own slice at that
        fraction, at a record's start. Within that one pass the old ranks' read prefixes and the
        new ranks' unread suffixes need not tile the records exactly (each rank's window order
        is its own), so a few records may be read twice or skipped; from the next pass on every
        record is read once again. The sample counts are shared out so their totals stay exact."""
        rows_per_record = self.index.num_samples / self.index.num_records
        positions = []
        for state in states:
            start, end = rank_slice(self.index.num_records, state["rank"], state["world_size"])
            cursor = state["cursor"]
            positions.append(cursor["epoch"] + (cursor["record"] + cursor["row"] / rows_per_record) / (end - start))
        position = sum(positions) / len(positions)
        epoch = math.floor(position)
        record = min(math.floor((position - epoch) * self.slice_len), self.slice_len - 1)

        def share(total: int) -> int:
            return total // self.world_size + (self.rank < total % self.world_size)

        return {"cursor": asdict(Cursor(epoch, record, 0)),
                "samples_seen": share(sum(s["samples_seen"] for s in states)),
                "corrupt_samples": share(sum(s.get("corrupt_samples", 0) for s in states)),
                "rank": self.rank, "world_size": self.world_size, "loader_workers": self.layout.workers,
                "window": self.window}

    def close(self) -> None:
        for source in self._sources or []:
            source.close()  # a worker process, or a generator holding an open shard
        self._sources, self._chunk = None, None
