"""What `gan-dist data pack` reads: an image folder, Parquet, .npz, IDX, a builtin set.

Each reader checks its input up front (a missing folder, an unreadable
Parquet file, no images: DataError, before anything is written) and then
yields `Item`s lazily: an image folder yields paths (workers read the files),
Parquet yields bytes one record batch at a time, so memory stays flat for any
table size.

Keys are the item's position in the input's natural order (sorted paths,
table rows, array index), so they survive the shuffle that packing applies
and tie every shard record back to its input.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gan_dist.data import builtin, idx, images
from gan_dist.data.errors import DataError

# Rows per Parquet record batch: the unit of memory while packing a table.
PARQUET_BATCH_ROWS = 1024


@dataclass
class Item:
    key: str
    label: int = -1
    data: bytes | None = None  # encoded image
    path: str | None = None  # or a file holding it
    pixels: np.ndarray | None = None  # or uint8 [H, W, C] pixels


@dataclass
class ImageSource:
    where: str  # the input, for messages and the index
    name: str
    labelled: bool
    items: Callable[[], Iterator[Item]]
    classes: list[str] = field(default_factory=list)  # label -> name; empty: unnamed
    meta: dict = field(default_factory=dict)  # more facts for the index (e.g. preprocess)


def key_of(i: int) -> str:
    return f"{i:08d}"


def _order(n: int, shuffle: bool, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


# Image folder -------------------------------------------------------------------------

def _image_files(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, in sorted order; hidden entries skipped."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files)
                if not f.startswith(".") and f.lower().endswith(images.INPUT_SUFFIXES)]
    return out


def folder_source(path: str, shuffle: bool, seed: int) -> ImageSource:
    """One subfolder per class (labels in sorted folder order), or images directly in `path` (unlabelled)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{path}: no such folder")
    loose = [str(p) for p in sorted(root.iterdir()) if p.is_file() and p.name.lower().endswith(images.INPUT_SUFFIXES)]
    classes = {d.name: _image_files(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    classes = {name: files for name, files in classes.items() if files}
    if classes and loose:
        raise DataError(f"{path} mixes class subfolders ({', '.join(list(classes)[:3])}) with loose images "
                        f"({Path(loose[0]).name}); move the loose images into a class folder")
    files = [(f, label) for label, name in enumerate(classes) for f in classes[name]] or [(f, -1) for f in loose]
    if not files:
        raise DataError(f"{path}: no images ({', '.join(images.INPUT_SUFFIXES)}) found")

    def items() -> Iterator[Item]:
        for i in _order(len(files), shuffle, seed):
            yield Item(key_of(int(i)), files[i][1], path=files[i][0])

    return ImageSource(path, root.resolve().name, bool(classes), items, list(classes))


def files_source(where: str, name: str, files: list[Path], shuffle: bool, seed: int) -> ImageSource:
    """Unlabelled images from a list of files (a builtin set of photographs); keys follow the list."""
    def items() -> Iterator[Item]:
        for i in _order(len(files), shuffle, seed):
            yield Item(key_of(int(i)), path=str(files[i]))

    return ImageSource(where, name, False, items)


# Parquet ------------------------------------------------------------------------------

def _parquet_files(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet") if not f.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no .parquet files")
        return files
    if not p.is_file():
        raise DataError(f"{path}: no such file or folder")
    return [str(p)]


def _open_parquet(file: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{file}: unreadable Parquet ({exc})") from None


def _image_bytes(column: pa.ChunkedArray | pa.Array, name: str, where: str) -> pa.Array:
    """The bytes of an image column: binary, or a struct with a `bytes` field
    (Hugging Face's Image feature)."""
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = column.field("bytes") if isinstance(column, pa.Array) else column.combine_chunks().field("bytes")
        kind = column.type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DataError(f"{where}: column {name!r} is {kind}, not image bytes")
    return column


def _hf_class_names(schema: pa.Schema, column: str) -> list[str]:
    """Class names that Hugging Face datasets store in the schema metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][column]
        return list(feature["names"]) if feature.get("_type") == "ClassLabel" else []
    except (TypeError, KeyError, ValueError):
        return []


def parquet_source(path: str, image_column: str, label_column: str | None, shuffle: bool, seed: int,
                   batch_rows: int = PARQUET_BATCH_ROWS) -> ImageSource:
    """Rows of Parquet file(s): `image_column` holds encoded images, `label_column`
    (default "label", optional) integer or string labels. A null or negative
    label is refused before anything is written (DataError naming the row).

    Shuffling keeps memory flat: row groups are visited in a random order and
    rows are permuted within each record batch."""
    files = _parquet_files(path)
    parquet = [_open_parquet(f) for f in files]
    schema = parquet[0].schema_arrow
    for f, pf in zip(files, parquet):
        if image_column not in pf.schema_arrow.names:
            raise DataError(f"{f}: no column {image_column!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                            f"name the image column with --image-column")
    explicit = label_column is not None
    label_column = label_column or "label"
    labelled = label_column in schema.names
    if explicit and not labelled:
        raise DataError(f"{files[0]}: no label column {label_column!r} (columns: {', '.join(schema.names)})")
    _image_bytes(pa.array([], schema.field(image_column).type), image_column, files[0])
    classes, lookup = [], None
    if labelled:
        kind = schema.field(label_column).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            classes = sorted(_distinct(parquet, label_column))
            lookup = {name: i for i, name in enumerate(classes)}
        elif pa.types.is_integer(kind):
            classes = _hf_class_names(schema, label_column)
        else:
            raise DataError(f"{files[0]}: label column {label_column!r} is {kind}, not integers or strings")
        for f, pf in zip(files, parquet):
            _check_labels(pf, label_column, f)
    # (file, row group, first row key) for every row group, in the table's order
    units, offset = [], 0
    for fi, pf in enumerate(parquet):
        for g in range(pf.metadata.num_row_groups):
            units.append((fi, g, offset))
            offset += pf.metadata.row_group(g).num_rows
    if offset == 0:
        raise DataError(f"{path}: the table has no rows")
    columns = [image_column] + ([label_column] if labelled else [])

    def items() -> Iterator[Item]:
        rng = np.random.default_rng(seed)
        for u in (rng.permutation(len(units)) if shuffle else range(len(units))):
            fi, g, first = units[u]
            for batch in parquet[fi].iter_batches(batch_rows, row_groups=[g], columns=columns):
                data = _image_bytes(batch.column(0), image_column, files[fi]).to_pylist()
                labels = batch.column(1).to_pylist() if labelled else [-1] * len(data)
                for r in (rng.permutation(len(data)) if shuffle else range(len(data))):
                    label = labels[r]
                    if lookup is not None and label is not None:
                        label = lookup[label]
                    yield Item(key_of(first + r), -1 if label is None else int(label), data=data[r])
                first += len(data)

    name = Path(path).resolve().stem
    return ImageSource(path, name, labelled, items, classes)


def _check_labels(pf: pq.ParquetFile, column: str, where: str) -> None:
    """Every label is there and >= 0: a null or negative label is refused, not packed
    as a class of its own (one pass over the label column, a record batch at a time)."""
    first = 0
    for batch in pf.iter_batches(PARQUET_BATCH_ROWS * 64, columns=[column]):
        labels = batch.column(0)
        bad = pc.is_null(labels)
        if pa.types.is_integer(labels.type):
            bad = pc.or_kleene(bad, pc.less(labels, 0))
        if pc.any(bad).as_py():
            row = first + pc.index(bad, True).as_py()
            value = labels[row - first].as_py()
            raise DataError(f"{where}: row {row} has label {'null' if value is None else value} in column "
                            f"{column!r}; every row needs a label >= 0: drop or fix those rows")
        first += len(labels)


def _distinct(parquet: list[pq.ParquetFile], column: str) -> set:
    """Distinct values of one column, one record batch in memory at a time."""
    values: set = set()
    for pf in parquet:
        for batch in pf.iter_batches(PARQUET_BATCH_ROWS * 64, columns=[column]):
            values.update(v for v in batch.column(0).unique().to_pylist() if v is not None)
    return values


# NumPy .npz and builtin sets -----------------------------------------------------------

IMAGE_KEYS = ("images", "image", "x", "X", "data")
LABEL_KEYS = ("labels", "label", "y", "targets")


def array_source(where: str, name: str, pixels: np.ndarray, labels: np.ndarray | None, classes: list[str],
                 shuffle: bool, seed: int) -> ImageSource:
    """uint8 pixels [N, H, W, C] (and labels [N]) as an image source."""
    n = len(pixels)
    if n == 0:
        raise DataError(f"{where}: no images")
    if labels is not None and (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{where}: labels must be {n} integers, got {labels.dtype} {list(labels.shape)}")
    if labels is not None and labels.min() < 0:
        raise DataError(f"{where}: label {labels.min()} < 0")

    def items() -> Iterator[Item]:
        for i in _order(n, shuffle, seed):
            yield Item(key_of(int(i)), -1 if labels is None else int(labels[i]), pixels=pixels[i])

    return ImageSource(where, name, labels is not None, items, classes)


def _hwc(x: np.ndarray, where: str) -> np.ndarray:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] uint8 -> [N, H, W, C]."""
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x.transpose(0, 2, 3, 1)
    raise DataError(f"{where}: images of shape {list(x.shape)}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]")


def npz_source(path: str, image_key: str | None, label_key: str | None, shuffle: bool, seed: int) -> ImageSource:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npz ({exc})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):  # np.load reads .npy bytes whatever the name
        raise DataError(f"{path}: not a .npz archive (it holds one bare .npy array); save it with np.savez")
    keys = list(arrays.keys())
    image_key = image_key or next((k for k in IMAGE_KEYS if k in keys), None)
    if image_key not in keys:
        raise DataError(f"{path}: no image array (arrays: {', '.join(keys)}); name it with --image-column")
    if label_key and label_key not in keys:
        raise DataError(f"{path}: no label array {label_key!r} (arrays: {', '.join(keys)})")
    label_key = label_key or next((k for k in LABEL_KEYS if k in keys), None)
    try:  # each array is read (and checked) only here
        labels = arrays[label_key] if label_key else None
        classes = [str(c) for c in arrays["classes"]] if "classes" in keys else []
        pixels = _hwc(arrays[image_key], path)
    except (OSError, ValueError, EOFError) as exc:  # a damaged member, or object arrays (pickle)
        raise DataError(f"{path}: unreadable .npz array ({exc})") from None
    return array_source(path, Path(path).stem, pixels, labels, classes, shuffle, seed)


def idx_source(path: str, shuffle: bool, seed: int) -> ImageSource:
    """An IDX split (MNIST's format): an images file, its labels beside it, or a folder holding one pair."""
    pixels, labels, name = idx.read_pair(Path(path))
    return array_source(path, name, pixels[..., None], labels, [], shuffle, seed)


def is_idx(path: Path) -> bool:
    """An IDX images file, or a folder holding one (and no class subfolders)."""
    if path.is_file():
        return idx.is_images_file(path.name)
    return path.is_dir() and any(p.is_file() and idx.is_images_file(p.name) for p in path.iterdir())


def builtin_image_source(name: str, shuffle: bool, seed: int) -> ImageSource:
    spec = builtin.IMAGES[name]
    pixels, labels = spec.make()
    source = array_source(f"builtin:{name}", name, pixels, labels, list(spec.classes), shuffle, seed)
    source.meta["preprocess"] = spec.preprocess
    source.meta.update(spec.meta)
    return source
