"""Resolve `data.source` to a packed dataset's index.

A source is one item or several separated by commas. Each item is
- `builtin:NAME`: packed into the cache folder on first use; every node that
  needs it packs the same bytes, so nothing has to be copied between nodes;
- a dataset folder, or its index.parquet, as a local path or a URL
  (`file://`, `http(s)://`, `s3://` or another pyarrow.fs scheme);
- shards of such a dataset by name, glob or brace pattern, e.g.
  `DIR/shard-{000000..000003}.tar` or `s3://bucket/ds/shard-00001*.tar`.
  Patterns are matched against the names in the folder's index.parquet, so
  no listing is needed (HTTP has none).

The index is required: its record counts are what make the exact split of
records among ranks possible. Items from several folders are merged when
their data agree (kind, sample shape, fields, classes).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from braceexpand import braceexpand

from gan_dist.data import fs
from gan_dist.data.errors import DataError
from gan_dist.data.index import INDEX_FILE, DatasetIndex, ShardInfo
from gan_dist.data.pack import builtin_names, pack_atomically, pack_builtin

__all__ = ["DataError", "builtin_names", "cache_root", "resolve_source"]

BUILTIN_VERSION = 1
# Dataset facts that must agree for shards of several folders to be mixed.
MERGE_KEYS = ("kind", "sample_shape", "fields", "num_classes")


def cache_root(cache_dir: str) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GAN_DIST_CACHE", "~/.cache/gan-dist")).expanduser()


def builtin_folder(name: str, cache_dir: str = "") -> str:
    """The cache folder of builtin dataset `name`, packed if it is not there yet."""
    if name not in builtin_names():
        raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(builtin_names())})")
    folder = cache_root(cache_dir) / "builtin" / f"{name}-v{BUILTIN_VERSION}"
    if not (folder / INDEX_FILE).exists():
        pack_atomically(folder, lambda tmp: pack_builtin(name, tmp))
    return str(folder)


def resolve_source(source: str, cache_dir: str = "") -> DatasetIndex:
    """The index of the dataset (or the shards) named by `source`."""
    wanted: dict[str, list[str] | None] = {}  # folder -> shard name patterns (None: all shards)
    for item in (part.strip() for part in source.split(",")):
        if not item:
            continue
        if item.startswith("builtin:"):
            wanted[builtin_folder(item.split(":", 1)[1], cache_dir)] = None
            continue
        for expanded in braceexpand(item):
            folder, pattern = _split_item(expanded)
            if pattern is None or wanted.get(folder, []) is None:
                wanted[folder] = None
            else:
                wanted.setdefault(folder, []).append(pattern)
    if not wanted:
        raise DataError("data.source is empty")
    return _merge([_select(read_index(folder), patterns) for folder, patterns in wanted.items()])


def _split_item(item: str) -> tuple[str, str | None]:
    """(dataset folder, shard name pattern or None for the whole dataset)."""
    folder, name = fs.split(item)
    folder = folder or "."
    if name == INDEX_FILE:
        return folder, None
    if name.endswith(".tar") or any(c in name for c in "*?["):
        return folder, name
    return item.rstrip("/"), None


def read_index(folder: str) -> DatasetIndex:
    """The index.parquet of dataset `folder` (a path or URL)."""
    if fs.is_local(folder):
        path = Path(fs.local_path(folder))
        if not path.exists():
            raise DataError(f"data.source {folder}: no such file or folder")
        if not (path / INDEX_FILE).is_file():
            raise DataError(f"data.source {folder}: no {INDEX_FILE} (pack it first with `gan-dist data pack`)")
    url = fs.join(folder, INDEX_FILE)
    try:
        data = fs.read_bytes(url)
    except FileNotFoundError:
        raise DataError(f"data.source {folder}: no {INDEX_FILE} there (a source must be a dataset "
                        f"packed by `gan-dist data pack`)") from None
    except OSError as exc:
        raise DataError(f"data.source {folder}: cannot read {INDEX_FILE} ({type(exc).__name__}: {exc})") from None
    try:
        index = DatasetIndex.from_bytes(folder, data, url)
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: unreadable index ({exc})") from None
    if index.num_records == 0:
        raise DataError(f"{folder}: the dataset is empty")
    return index


def _select(index: DatasetIndex, patterns: list[str] | None) -> DatasetIndex:
    if patterns is None:
        return index
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(s.shard, pattern) for s in index.shards):
            raise DataError(f"data.source: {pattern} matches no shard in {fs.join(index.root, INDEX_FILE)}")
    shards = [s for s in index.shards if any(fnmatch.fnmatchcase(s.shard, p) for p in patterns)]
    subset = DatasetIndex(root=index.root, shards=shards, meta=index.meta)
    subset.meta = dict(index.meta, num_samples=subset.num_samples, num_records=subset.num_records)
    return subset


def _merge(indexes: list[DatasetIndex]) -> DatasetIndex:
    """Shards of several datasets as one; shard names become full URLs."""
    if len(indexes) == 1:
        return indexes[0]
    first = indexes[0]
    for other in indexes[1:]:
        for key in MERGE_KEYS:
            if other.meta.get(key) != first.meta.get(key):
                raise DataError(f"data.source mixes datasets whose {key} differ: {first.root} has "
                                f"{first.meta.get(key)}, {other.root} has {other.meta.get(key)}")
    shards = [ShardInfo(**dict(vars(s), shard=ix.url(i))) for ix in indexes for i, s in enumerate(ix.shards)]
    merged = DatasetIndex(root="", shards=shards, meta=dict(first.meta))
    merged.meta.update(name="+".join(ix.meta.get("name", "?") for ix in indexes),
                       num_samples=merged.num_samples, num_records=merged.num_records)
    return merged
