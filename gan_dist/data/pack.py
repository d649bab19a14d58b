"""Write WebDataset tar shards plus index.parquet, atomically.

Everything is written into a temporary sibling folder that is renamed into
place only when every shard and the index are complete, so an interrupted
pack never leaves a dataset that looks whole. Tars are byte-reproducible
(fixed mtime and owner), so packing the same input twice, on any node, gives
the same sha256 per shard.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import webdataset as wds

from gan_dist.data.index import INDEX_FILE, DatasetIndex, ShardInfo

Record = dict  # {"__key__": str, "<ext>": bytes, ...}; "__samples__"/"__classes__" are packing hints


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_shards(records: Iterable[Record], out_dir: Path, records_per_shard: int,
                 num_classes: int, meta: dict) -> DatasetIndex:
    """Write `records` into shard-NNNNNN.tar files under `out_dir` and return the index.

    Each record may carry `__samples__` (rows it holds, default 1) and
    `__classes__` (a class label per row) for the index's counts.
    """
    shards: list[ShardInfo] = []
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == records_per_shard:
            shards.append(_write_one(out_dir, len(shards), batch, num_classes))
            batch = []
    if batch:
        shards.append(_write_one(out_dir, len(shards), batch, num_classes))
    index = DatasetIndex(root=str(out_dir), shards=shards, meta=meta)
    index.write(str(out_dir / INDEX_FILE))
    return index


def _write_one(out_dir: Path, number: int, records: list[Record], num_classes: int) -> ShardInfo:
    name = f"shard-{number:06d}.tar"
    buf = io.BytesIO()
    num_samples = 0
    class_counts = np.zeros(num_classes, dtype=np.int64)
    with wds.TarWriter(buf, encoder=False, mtime=0, user="gan-dist", group="gan-dist") as writer:
        for record in records:
            num_samples += record.get("__samples__", 1)
            if num_classes and "__classes__" in record:
                class_counts += np.bincount(record["__classes__"], minlength=num_classes)
            writer.write({k: v for k, v in record.items() if not k.startswith("__") or k == "__key__"})
    data = buf.getvalue()
    (out_dir / name).write_bytes(data)
    return ShardInfo(shard=name, num_samples=num_samples, num_records=len(records), num_bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), class_counts=class_counts.tolist())


def pack_atomically(final_dir: Path, fill: "callable[[Path], DatasetIndex]") -> None:
    """Run `fill(tmp_dir)` and rename tmp_dir to `final_dir` once it returns.

    If another process completed `final_dir` first, ours is discarded.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not (final_dir / INDEX_FILE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def mixture_records(mixture, num_points: int, points_per_record: int, seed: int) -> Iterator[Record]:
    rng = np.random.default_rng(seed)
    for number in range(num_points // points_per_record):
        points, modes = mixture.sample(points_per_record, rng)
        yield {"__key__": f"{number:08d}", "pts.npy": npy_bytes(points), "cls.npy": npy_bytes(modes),
               "__samples__": points_per_record, "__classes__": modes}
