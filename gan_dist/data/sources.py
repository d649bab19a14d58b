"""Resolve `data.source` to a packed dataset's index.

`builtin:NAME` is packed into the cache folder on first use; every node that
needs it packs the same bytes, so nothing has to be copied between nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

from gan_dist.data import builtin
from gan_dist.data.index import INDEX_FILE, DatasetIndex
from gan_dist.data.pack import mixture_records, pack_atomically, write_shards

BUILTIN_VERSION = 1


class DataError(ValueError):
    """The data cannot be used: missing, unreadable, or not what the config says."""


def builtin_names() -> list[str]:
    return sorted(builtin.MIXTURES)


def cache_root(cache_dir: str) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GAN_DIST_CACHE", "~/.cache/gan-dist")).expanduser()


def pack_builtin(name: str, out_dir: Path) -> DatasetIndex:
    """Pack builtin dataset `name` into `out_dir` (which must not exist yet)."""
    if name not in builtin.MIXTURES:
        raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(builtin_names())})")
    mixture = builtin.MIXTURES[name]()
    meta = {"name": name, "kind": "points", "sample_shape": [2], "num_classes": mixture.num_modes,
            "fields": {"x": "pts.npy", "y": "cls.npy"}, "mixture": mixture.to_meta()}
    records = mixture_records(mixture, builtin.MIXTURE_POINTS, builtin.POINTS_PER_RECORD,
                              builtin.MIXTURE_DATA_SEED)
    return write_shards(records, out_dir, builtin.RECORDS_PER_SHARD, mixture.num_modes, meta)


def resolve_source(source: str, cache_dir: str = "") -> DatasetIndex:
    """The index of the dataset named by `source`, packing a builtin one if needed."""
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in builtin.MIXTURES:
            raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(builtin_names())})")
        folder = cache_root(cache_dir) / "builtin" / f"{name}-v{BUILTIN_VERSION}"
        if not (folder / INDEX_FILE).exists():
            pack_atomically(folder, lambda tmp: pack_builtin(name, tmp))
        return _read_index(folder)
    path = Path(source[len("file://"):] if source.startswith("file://") else source).expanduser()
    if path.name == INDEX_FILE:
        path = path.parent
    if not path.exists():
        raise DataError(f"data.source {source}: no such file or folder")
    if not (path / INDEX_FILE).is_file():
        raise DataError(f"data.source {source}: no {INDEX_FILE} (pack it first with `gan-dist data pack`)")
    return _read_index(path)


def _read_index(folder: Path) -> DatasetIndex:
    try:
        index = DatasetIndex.read(str(folder), str(folder / INDEX_FILE))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / INDEX_FILE}: unreadable index ({exc})") from None
    if index.num_records == 0:
        raise DataError(f"{folder}: the dataset is empty")
    return index
