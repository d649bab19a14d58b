"""Small datasets for data-plane tests, and ways to damage them."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from gan_dist.data.index import INDEX_FILE, DatasetIndex
from gan_dist.data.pack import PackOptions, ShardWriter, npy_bytes, pack_images
from gan_dist.data.readers import array_source


def id_dataset(root: Path, shard_records: list[int], max_rows: int = 3) -> tuple[DatasetIndex, int]:
    """Points records (1..max_rows rows each) whose rows carry their own id, in
    `y` and in x = (id, -id): any sample a stream yields names itself."""
    root.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(root, max_records=10**9)
    next_id = 0
    for count in shard_records:
        for _ in range(count):
            rows = 1 + next_id % max_rows
            ids = np.arange(next_id, next_id + rows)
            writer.add({"__key__": f"{next_id:08d}", "pts.npy": npy_bytes(np.stack([ids, -ids], 1).astype(np.float32)),
                        "cls.npy": npy_bytes(ids), "__samples__": rows})
            next_id += rows
        writer.end_shard()
    meta = {"name": "ids", "kind": "points", "sample_shape": [2], "num_classes": 0,
            "fields": {"x": "pts.npy", "y": "cls.npy"}}
    return writer.finish(meta, 0), next_id


def random_images(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def image_dataset(root: Path, n: int, per_shard: int, seed: int = 0) -> DatasetIndex:
    """n random 8x8 RGB PNG records with labels 0..2, `per_shard` per shard, in key order.
    The label of key k is labels[k], so tests can check what a stream yields."""
    pixels, labels = random_images(n, seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    source = array_source("test", "test", pixels, labels, ["a", "b", "c"], shuffle=False, seed=0)
    return pack_images(source, root, PackOptions(shard_samples=per_shard, encode="png"))


def corrupt_image_dataset(root: Path, n: int = 64, size: int = 16, per_shard: int = 8) -> DatasetIndex:
    """Random PNG images whose every shard holds one record that does not decode."""
    pixels, labels = random_images(n, size=size)
    root.mkdir(parents=True, exist_ok=True)
    index = pack_images(array_source("t", "t", pixels, labels, ["a", "b", "c"], shuffle=False, seed=0),
                        root, PackOptions(shard_samples=per_shard, encode="png"))
    for info in index.shards:
        first = sorted(name for name in tar_members(root / info.shard) if name.endswith(".png"))[0]
        replace_member(root, info.shard, first, b"not a png")
    return index


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def replace_member(root: Path, shard: str, member: str, data: bytes) -> None:
    """Rewrite shard `shard` with one member's bytes replaced, and fix the index's
    checksum so the damage is inside a record, not a checksum mismatch."""
    path = root / shard
    members = tar_members(path)
    assert member in members, member
    members[member] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buf.getvalue())
    refresh_checksum(root, shard)


def refresh_checksum(root: Path, shard: str) -> None:
    index = DatasetIndex.read(str(root), str(root / INDEX_FILE))
    data = (root / shard).read_bytes()
    for info in index.shards:
        if info.shard == shard:
            info.sha256, info.num_bytes = hashlib.sha256(data).hexdigest(), len(data)
    meta = {k: v for k, v in index.meta.items() if k not in ("num_samples", "num_records", "format_version")}
    DatasetIndex(index.root, index.shards, meta).write(str(root / INDEX_FILE))


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def take_rows(stream, n_batches: int) -> list[np.ndarray]:
    return [stream.next_batch()["y"] for _ in range(n_batches)]
