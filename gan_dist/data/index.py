"""A packed dataset: tar shards plus `index.parquet`, one row per shard.

Columns: shard, num_samples, num_records, num_bytes, sha256, class_counts.
Dataset-level facts live in the Parquet schema metadata under the key
`gan_dist`: kind ("points" or "image"), sample_shape ([C, H, W] for images),
num_classes and classes (names), fields (which tar member feeds which array),
the dataset totals num_samples and num_records, and for builtin mixtures the
mixture definition.

An index is input like any other: `from_table` checks every fact it uses
(types, ranges, the shard names) and raises DataError naming the first that
is wrong, so a damaged or hostile index is one line of error, never a
traceback, a huge allocation or a read outside the dataset:
- shard names are relative paths inside the dataset's folder: no scheme, no
  leading `/`, no `..`;
- counts are consistent with sizes: a record takes at least one tar header
  (512 bytes) and a sample at least one byte, so an index cannot claim 10**12
  records for a shard of a few kilobytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from gan_dist.data import fs
from gan_dist.data.errors import DataError

INDEX_FILE = "index.parquet"
META_KEY = b"gan_dist"
FORMAT_VERSION = 1
KINDS = ("points", "image")
TAR_HEADER_BYTES = 512  # the least a tar member (and so a record) takes
# Sanity bounds on what an index may claim; far beyond any real dataset.
MAX_CLASSES = 1 << 20
MAX_SIDE = 1 << 16  # image height or width, pixels
MAX_SAMPLE_VALUES = 1 << 28  # values in one sample
_SHA256 = re.compile(r"[0-9a-f]{64}")

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
            raise DataError(f"{where} is not a gan-dist index (no {META_KEY.decode()} metadata)")
        missing = [c for c in SCHEMA.names if c not in table.column_names]
        if missing:
            raise DataError(f"{where} lacks index column {missing[0]}")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{where}: its {META_KEY.decode()} metadata is not JSON ({exc})") from None
        check_meta(meta, where)
        shards = [ShardInfo(**{k: row[k] for k in SCHEMA.names})
                  for row in table.select(SCHEMA.names).to_pylist()]
        for number, info in enumerate(shards):
            check_shard(info, meta["num_classes"], f"{where} row {number}")
        if not shards:
            raise DataError(f"{where}: the index lists no shards")
        return cls(root=root, shards=shards, meta=meta)


# Checks -------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        shown = repr(value)
        raise DataError(f"{where}: {what}, got {shown[:60] + '...' if len(shown) > 60 else shown}")


def check_meta(meta, where: str) -> None:
    """The dataset facts the code uses are there and sane; DataError names the first that is not."""
    _require(isinstance(meta, dict), where, "the index metadata must be a JSON object", meta)
    kind = meta.get("kind")
    _require(kind in KINDS, where, f"metadata kind must be one of {', '.join(KINDS)}", kind)
    shape = meta.get("sample_shape")
    _require(isinstance(shape, list) and len(shape) >= 1 and all(_is_int(d) and 1 <= d <= MAX_SIDE for d in shape),
             where, f"metadata sample_shape must be a list of sizes in 1..{MAX_SIDE}", shape)
    _require(math.prod(shape) <= MAX_SAMPLE_VALUES, where, f"a sample must hold at most {MAX_SAMPLE_VALUES} "
             "values (metadata sample_shape)", shape)
    if kind == "image":
        _require(len(shape) == 3 and shape[0] in (1, 3), where,
                 "an image dataset's sample_shape must be [channels (1 or 3), height, width]", shape)
    classes = meta.get("num_classes", 0)
    _require(_is_int(classes) and 0 <= classes <= MAX_CLASSES, where,
             f"metadata num_classes must be an integer in 0..{MAX_CLASSES}", classes)
    meta.setdefault("num_classes", classes)
    names = meta.get("classes", [])
    _require(isinstance(names, list) and len(names) <= max(classes, 0) and all(isinstance(n, str) for n in names),
             where, "metadata classes must be a list of at most num_classes names", names)
    fields = meta.get("fields")
    _require(isinstance(fields, dict) and "x" in fields
             and all(isinstance(k, str) and isinstance(v, str) and v for k, v in fields.items()),
             where, "metadata fields must map names (at least x) to member extensions", fields)
    _require(isinstance(meta.get("name", ""), str), where, "metadata name must be a string", meta.get("name"))
    if "mixture" in meta:
        mixture = meta["mixture"]
        ok = isinstance(mixture, dict) and isinstance(mixture.get("means"), list) and 0 < len(mixture["means"]) <= MAX_CLASSES
        ok = ok and all(isinstance(m, list) and len(m) == 2 and all(_finite(v) for v in m) for m in mixture["means"])
        _require(ok and _finite(mixture.get("std")) and mixture["std"] > 0, where,
                 "metadata mixture must hold means (a list of [x, y]) and std > 0", mixture)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_shard(info: ShardInfo, num_classes: int, where: str) -> None:
    """One index row: a safe name, counts that its size allows, a sha256, a class histogram."""
    check_shard_name(info.shard, where)
    for name in ("num_samples", "num_records", "num_bytes"):
        value = getattr(info, name)
        _require(_is_int(value) and value >= 0, f"{where} ({info.shard})", f"{name} must be an integer >= 0", value)
    _require(info.num_records * TAR_HEADER_BYTES <= info.num_bytes, f"{where} ({info.shard})",
             f"{info.num_records:,} records cannot fit in {info.num_bytes:,} bytes (a record takes at least "
             f"{TAR_HEADER_BYTES}): num_records", info.num_records)
    _require(info.num_samples <= info.num_bytes and (info.num_samples == 0 or info.num_records > 0),
             f"{where} ({info.shard})", f"{info.num_records:,} records of {info.num_bytes:,} bytes cannot hold "
             "that many samples: num_samples", info.num_samples)
    _require(isinstance(info.sha256, str) and bool(_SHA256.fullmatch(info.sha256)), f"{where} ({info.shard})",
             "sha256 must be 64 lower-case hex digits", info.sha256)
    counts = info.class_counts
    _require(isinstance(counts, list) and len(counts) == num_classes and all(_is_int(c) and c >= 0 for c in counts)
             and sum(counts) <= max(info.num_samples, 0), f"{where} ({info.shard})",
             f"class_counts must be {num_classes} counts >= 0 adding up to at most num_samples", counts)


def check_shard_name(name, where: str) -> None:
    """A shard is a file inside the dataset: a hostile index must not make us read
    /etc/passwd, ../elsewhere.tar or another server's URL."""
    _require(isinstance(name, str) and name != "", where, "a shard name must be a non-empty string", name)
    parts = name.split("/")
    _require(not fs.scheme(name) and not name.startswith(("/", "~")) and "\\" not in name and "\0" not in name
             and ".." not in parts and "" not in parts and "?" not in name, where,
             "a shard name must be a relative path inside the dataset (no URL scheme, no leading / or ~, no ..)",
             name)
