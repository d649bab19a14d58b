"""A packed dataset: tar shards plus `index.parquet`, one row per shard.

Columns: shard, num_samples, num_records, num_bytes, sha256, class_counts.
Dataset-level facts live in the Parquet schema metadata under the key
`gan_dist`: kind ("points" or "image"), sample_shape ([C, H, W] for images),
num_classes and classes (names), fields (which tar member feeds which array),
the dataset totals num_samples and num_records, and for builtin mixtures the
mixture definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from gan_dist.data import fs

INDEX_FILE = "index.parquet"
META_KEY = b"gan_dist"
FORMAT_VERSION = 1

SCHEMA = pa.schema([
    ("shard", pa.string()),
    ("num_samples", pa.int64()),
    ("num_records", pa.int64()),
    ("num_bytes", pa.int64()),
    ("sha256", pa.string()),
    ("class_counts", pa.list_(pa.int64())),
])


@dataclass
class ShardInfo:
    shard: str
    num_samples: int
    num_records: int
    num_bytes: int
    sha256: str
    class_counts: list[int] = field(default_factory=list)


@dataclass
class DatasetIndex:
    root: str  # folder (or URL prefix) holding the shards
    shards: list[ShardInfo]
    meta: dict

    @property
    def num_records(self) -> int:
        return sum(s.num_records for s in self.shards)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def url(self, i: int) -> str:
        return fs.join(self.root, self.shards[i].shard)

    def write(self, path: str) -> None:
        table = pa.Table.from_pylist([vars(s) for s in self.shards], schema=SCHEMA)
        meta = dict(self.meta, format_version=FORMAT_VERSION,
                    num_samples=self.num_samples, num_records=self.num_records)
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        pq.write_table(table, path)

    # ParquetFile, not pq.read_table: read_table's dataset scanner may release
    # its buffer on an Arrow thread while Python shuts down, which aborts the
    # process (exit 134, "terminate called without an active exception").
    @classmethod
    def read(cls, root: str, path: str) -> "DatasetIndex":
        return cls.from_table(root, pq.ParquetFile(path).read(use_threads=False), path)

    @classmethod
    def from_bytes(cls, root: str, data: bytes, where: str) -> "DatasetIndex":
        return cls.from_table(root, pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False), where)

    @classmethod
    def from_table(cls, root: str, table: pa.Table, where: str) -> "DatasetIndex":
        raw = (table.schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{where} is not a gan-dist index (no {META_KEY.decode()} metadata)")
        missing = [c for c in SCHEMA.names if c not in table.column_names]
        if missing:
            raise ValueError(f"{where} lacks index column {missing[0]}")
        shards = [ShardInfo(**{k: row[k] for k in SCHEMA.names}) for row in table.to_pylist()]
        return cls(root=root, shards=shards, meta=json.loads(raw))
