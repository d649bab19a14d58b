"""Resolve `data.source` to a packed dataset's index.

A source is one item or several separated by commas. Each item is
- `builtin:NAME`: packed into the cache folder on first use; every node that
  needs it packs the same bytes, so nothing has to be copied between nodes;
- a dataset folder, or its index.parquet, as a local path or a URL
  (`file://`, `http(s)://`, `s3://` or another pyarrow.fs scheme);
- shards of such a dataset by name, glob or brace pattern, e.g.
  `DIR/shard-{000000..000003}.tar` or `s3://bucket/ds/shard-00001*.tar`.
  Patterns are matched against the names in the folder's index.parquet, so
  no listing is needed (HTTP has none). Every name a brace pattern makes
  must be a shard of the index. A pattern is counted before it is expanded:
  one that makes more names than the index lists shards is refused at once
  (`{000000000..999999999}` costs nothing), and the dataset folders a
  source names are at most MAX_SOURCE_ITEMS.

The index is required: its record counts are what make the exact split of
records among ranks possible. Items from several folders are merged when
their data agree (kind, sample shape, fields, classes).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from gan_dist.data import braces, builtin, fs, photos
from gan_dist.data.errors import DataError
from gan_dist.data.index import INDEX_FILE, DatasetIndex, ShardInfo
from gan_dist.data.pack import builtin_names, pack_atomically, pack_builtin

__all__ = ["DataError", "builtin_names", "cache_root", "resolve_source"]

BUILTIN_VERSION = 1
# Dataset facts that must agree for shards of several folders to be mixed.
MERGE_KEYS = ("kind", "sample_shape", "fields", "num_classes")
# Names a source may expand to before any index is read (dataset folders, shard names).
MAX_SOURCE_ITEMS = 1024
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class NamePattern:
    """Shard names too many to list before the index is read: checked against it."""
    text: str
    tree: braces.Seq
    count: int


Pattern = Union[str, NamePattern]  # a shard name, a glob, or a big brace pattern


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
        spec = builtin.IMAGES.get(name)
        if spec is not None and spec.check is not None:
            spec.check()  # before any folder is made: a missing package is one line, nothing written
        if name in photos.PHOTO_SPLITS:
            photos.photo_files(name)  # the same for the photographs' package
        pack_atomically(folder, lambda tmp: pack_builtin(name, tmp),
                        hint=" (the builtin cache: set GAN_DIST_CACHE or data.cache_dir to a writable folder)")
    return str(folder)


def resolve_source(source: str, cache_dir: str = "") -> DatasetIndex:
    """The index of the dataset (or the shards) named by `source`."""
    wanted: dict[str, list[Pattern] | None] = {}  # folder -> shard name patterns (None: all shards)
    for item in (part.strip() for part in braces.split_top(source, ",")):
        if not item:
            continue
        if item.startswith("builtin:"):
            wanted[builtin_folder(item.split(":", 1)[1], cache_dir)] = None
            continue
        for folder, pattern in _expand_item(item):
            if pattern is None or wanted.get(folder, []) is None:
                wanted[folder] = None
            else:
                wanted.setdefault(folder, []).append(pattern)
            if len(wanted) > MAX_SOURCE_ITEMS:
                raise DataError(f"data.source names more than {MAX_SOURCE_ITEMS} dataset folders")
    if not wanted:
        raise DataError("data.source is empty")
    return _merge([_select(read_index(folder), patterns) for folder, patterns in wanted.items()])


def _expand_item(item: str) -> Iterator[tuple[str, Pattern | None]]:
    """(folder, shard pattern or None) for each name a brace pattern makes; a
    pattern too big to list is kept whole for its folder's index to check."""
    try:
        tree = braces.parse(item)
    except braces.BraceError as exc:
        raise DataError(f"data.source: {exc}") from None
    total = braces.count(tree)
    if total <= MAX_SOURCE_ITEMS:
        for expanded in braces.expand(tree):
            yield _split_item(expanded)
        return
    base, sep, query = item.partition("?")
    *folder_parts, name = braces.split_top(base, "/")
    folder_tree = braces.parse("/".join(folder_parts))
    if not folder_parts or braces.count(folder_tree) > MAX_SOURCE_ITEMS or not _is_shard_pattern(name):
        raise DataError(f"data.source {item}: expands to {total:,} names, more than {MAX_SOURCE_ITEMS}; "
                        f"a pattern that large may only name shards (NAME.tar) of a few dataset folders")
    name_tree = braces.parse(name)
    for folder in braces.expand(folder_tree):
        yield (folder or ".") + sep + query, NamePattern(name, name_tree, braces.count(name_tree))


def _is_shard_pattern(name: str) -> bool:
    return name.endswith(".tar") or any(c in name for c in GLOB_CHARS)


def _split_item(item: str) -> tuple[str, str | None]:
    """(dataset folder, shard name pattern or None for the whole dataset)."""
    folder, name = fs.split(item)
    folder = folder or "."
    if name == INDEX_FILE:
        return folder, None
    if _is_shard_pattern(name):
        return folder, name
    return item.rstrip("/"), None


def read_index(folder: str) -> DatasetIndex:
    """The index.parquet of dataset `folder` (a path or URL), checked (see index.check_meta)."""
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
        raise DataError(f"data.source {folder}: cannot read {INDEX_FILE}: {exc}") from None
    try:
        index = DatasetIndex.from_bytes(folder, data, url)
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # Arrow's errors for bytes that are not Parquet
        raise DataError(f"{url}: unreadable index ({exc})") from None
    if index.num_records == 0:
        raise DataError(f"{folder}: the dataset is empty")
    return index


def _select(index: DatasetIndex, patterns: list[Pattern] | None) -> DatasetIndex:
    if patterns is None:
        return index
    names = {s.shard for s in index.shards}
    where = fs.join(index.root, INDEX_FILE)
    chosen: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, NamePattern):
            if pattern.count > len(names):
                raise DataError(f"data.source: {pattern.text} names {pattern.count:,} shards, but {where} lists "
                                f"{len(names):,}; use a glob such as shard-*.tar to take them all")
            for name in braces.expand(pattern.tree):  # at most as many names as the index has
                chosen |= _matching(name, names, where)
        else:
            chosen |= _matching(pattern, names, where)
    shards = [s for s in index.shards if s.shard in chosen]
    subset = DatasetIndex(root=index.root, shards=shards, meta=index.meta)
    subset.meta = dict(index.meta, num_samples=subset.num_samples, num_records=subset.num_records)
    return subset


def _matching(pattern: str, names: set[str], where: str) -> set[str]:
    """The shard names `pattern` (a name or a glob) stands for; DataError if none."""
    if any(c in pattern for c in GLOB_CHARS):
        found = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
    else:
        found = {pattern} & names
    if not found:
        raise DataError(f"data.source: {pattern} matches no shard in {where}")
    return found


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
