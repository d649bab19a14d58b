"""Write WebDataset tar shards plus index.parquet, atomically.

Everything is written into a temporary sibling folder that is renamed into
place only when every shard and the index are complete, so an interrupted
pack never leaves a dataset that looks whole. Tars are byte-reproducible
(fixed mtime and owner), so packing the same input twice, on any node, gives
the same sha256 per shard.

`pack` turns any supported input (image folder, Parquet, .npz, builtin:NAME)
into such a dataset: images are read, optionally resized and re-encoded in
worker processes, and written in input order by one writer, so the bytes do
not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from gan_dist.data import builtin, images, photos, readers
from gan_dist.data.errors import DataError
from gan_dist.data.index import INDEX_FILE, DatasetIndex, ShardInfo
from gan_dist.data.parallel import ordered_map

log = logging.getLogger("gan_dist.data")

Record = dict  # {"__key__": str, "<ext>": bytes, ...}; "__samples__"/"__classes__" are packing hints
TAR_BLOCK = 512


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


TAR_RECORD = 20 * TAR_BLOCK  # a streamed tar ends padded to a multiple of this


def tar_bytes(record: Record) -> int:
    """Bytes a record adds to a tar: a header block per member, data padded to blocks."""
    return sum(TAR_BLOCK + -(-len(v) // TAR_BLOCK) * TAR_BLOCK for k, v in record.items() if not k.startswith("__"))


def tar_file_bytes(content: int) -> int:
    """Size of a tar holding `content` bytes of members: two end blocks, then padding."""
    return -(-(content + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


class ShardWriter:
    """Streams records into shard-NNNNNN.tar files of at most `max_records`
    records and (when `max_bytes` > 0) about `max_bytes` bytes; memory holds
    one record, not one shard."""

    def __init__(self, out_dir: Path, max_records: int, max_bytes: int = 0):
        self.out_dir, self.max_records, self.max_bytes = out_dir, max_records, max_bytes
        self.shards: list[ShardInfo] = []
        self._file: _HashingFile | None = None
        self._tar = None
        self._records = self._samples = self._bytes = 0
        self._classes: Counter = Counter()

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards) + self._samples

    def add(self, record: Record) -> None:
        size = tar_bytes(record)
        full = self._records == self.max_records or (
            self.max_bytes and self._records and tar_file_bytes(self._bytes + size) > self.max_bytes)
        if self._tar is not None and full:
            self._close_shard()
        if self._tar is None:
            self._open_shard()
        self._tar.write({k: v for k, v in record.items() if not k.startswith("__") or k == "__key__"})
        self._records += 1
        self._samples += record.get("__samples__", 1)
        self._bytes += size
        self._classes.update(int(c) for c in record.get("__classes__", ()))

    def end_shard(self) -> None:
        """Start a new shard with the next record, whatever the limits."""
        if self._tar is not None:
            self._close_shard()

    def finish(self, meta: dict, num_classes: int) -> DatasetIndex:
        """Close the last shard and write index.parquet; class histograms get `num_classes` bins."""
        self.end_shard()
        for shard in self.shards:
            counts = dict(shard.class_counts)
            shard.class_counts = [counts.get(c, 0) for c in range(num_classes)]
        index = DatasetIndex(root=str(self.out_dir), shards=self.shards, meta=meta)
        index.write(str(self.out_dir / INDEX_FILE))
        return index

    def _open_shard(self) -> None:
        # Deferred on purpose: webdataset imports torch, which `data inspect`, `submit` and
        # `--help` (they import this module) do not need.
        import webdataset as wds

        self._file = _HashingFile(self.out_dir / f"shard-{len(self.shards):06d}.tar")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="gan-dist", group="gan-dist")

    def _close_shard(self) -> None:
        self._tar.close()
        self._file.close()
        # class_counts holds (class, count) pairs until finish() knows the number of classes
        self.shards.append(ShardInfo(shard=f"shard-{len(self.shards):06d}.tar", num_samples=self._samples,
                                     num_records=self._records, num_bytes=self._file.size,
                                     sha256=self._file.sha256.hexdigest(),
                                     class_counts=sorted(self._classes.items())))
        self._tar, self._file = None, None
        self._records = self._samples = self._bytes = 0
        self._classes = Counter()


def write_shards(records: Iterable[Record], out_dir: Path, records_per_shard: int,
                 num_classes: int, meta: dict) -> DatasetIndex:
    """Write `records` into shards of `records_per_shard` records and return the index.

    Each record may carry `__samples__` (rows it holds, default 1) and
    `__classes__` (a class label per row) for the index's counts.
    """
    writer = ShardWriter(out_dir, records_per_shard)
    for record in records:
        writer.add(record)
    return writer.finish(meta, num_classes)


def parents_to_make(path: Path) -> list[Path]:
    """The missing folders above and at `path`, innermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_can_create(path: Path, hint: str = "") -> list[Path]:
    """The folders to make above `path` (innermost first); DataError if one of
    its ancestors is a file, or the nearest existing one is not writable."""
    made = parents_to_make(path.parent)
    existing = made[-1].parent if made else path.parent
    if not existing.is_dir():
        raise DataError(f"cannot create {path}: {existing} is a file, not a folder{hint}")
    if not os.access(existing, os.W_OK | os.X_OK):  # as root this says yes: the mkdir that follows is the test
        raise DataError(f"cannot create {path}: {existing} is not writable{hint}")
    return made


def _make_tmp_dir(final_dir: Path) -> Path:
    """A new hidden sibling of `final_dir`, made with os.mkdir: the umask's normal
    permissions (tempfile.mkdtemp makes 0700, which other users, pods running as
    another uid or a shared NFS export cannot read once it is renamed into place)."""
    while True:
        tmp = final_dir.parent / f".{final_dir.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def pack_atomically(final_dir: Path, fill: "callable[[Path], DatasetIndex]", hint: str = "") -> None:
    """Run `fill(tmp_dir)` and rename tmp_dir to `final_dir` once it returns.

    If another process completed `final_dir` first, ours is discarded. On
    failure nothing is left behind, not even the parent folders made for it.
    A folder that cannot be made (under a file, read-only) is a DataError
    ending in `hint`, before any work."""
    made = check_can_create(final_dir, hint)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_tmp_dir(final_dir)
    except OSError as exc:
        remove_empty(made)
        raise DataError(f"cannot create {final_dir}: {exc.strerror or exc}{hint}") from None
    done = False
    try:
        fill(tmp)
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not (final_dir / INDEX_FILE).exists():
                raise
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            remove_empty(made)


def mixture_records(mixture, num_points: int, points_per_record: int, seed: int) -> Iterator[Record]:
    rng = np.random.default_rng(seed)
    for number in range(num_points // points_per_record):
        points, modes = mixture.sample(points_per_record, rng)
        yield {"__key__": f"{number:08d}", "pts.npy": npy_bytes(points), "cls.npy": npy_bytes(modes),
               "__samples__": points_per_record, "__classes__": modes}


# Images --------------------------------------------------------------------------------

ENCODINGS = ("keep", "png", "jpg", "webp", "ppm")


@dataclass
class PackOptions:
    shard_samples: int = 5000  # samples per shard at most
    shard_bytes: int = 128 << 20  # bytes per shard at most (a shard of one record may exceed it)
    size: int = 0  # resize and centre-crop to size x size; 0 keeps each image's size
    encode: str = "keep"  # keep the input's PNG/JPEG/WebP bytes, or re-encode: png, jpg, webp, ppm
    quality: int = 95  # JPEG/WebP quality; WebP at 100 is lossless
    workers: int = 1  # processes that decode, resize and encode
    shuffle: bool = True  # write samples in a random order (seeded): shards mix classes
    seed: int = 0
    name: str = ""  # the dataset's name in its index; default: the input's name
    crop: int = 0  # random crops of crop x crop pixels from each image instead of the whole image (0: off)
    crops_per_image: int = 1  # with crop: crops cut from each image (seeded by --seed and the image's key)
    max_pixels: int = photos.MAX_PIXELS  # larger inputs are skipped before they are decoded (bombs)


@dataclass
class Prepared:
    key: str
    label: int
    data: bytes
    ext: str
    width: int
    height: int
    channels: int


@dataclass
class Skipped:
    key: str
    reason: str
    size: tuple[int, int] | None = None  # set when the image was only smaller than the crop
    bomb: bool = False  # over the pixel limit: hostile or mistaken input, which ends the pack


def skipped(item: readers.Item, exc: Exception) -> Skipped:
    where = item.path or f"item {item.key}"
    if isinstance(exc, photos.ImageTooLarge):
        return Skipped(item.key, str(exc), bomb=True)
    return Skipped(item.key, f"{where}: {type(exc).__name__}: {exc}")


def open_item(item: readers.Item, max_pixels: int) -> tuple[Image.Image, str, bytes]:
    """An input's Pillow image (not decoded yet), its shard extension and its bytes ("" and b""
    for pixels); over `max_pixels` pixels is an ImageTooLarge."""
    if item.pixels is not None:
        return images.to_image(item.pixels), "", b""
    data = item.data if item.data is not None else Path(item.path).read_bytes()
    where = item.path or f"item {item.key}"
    return photos.open_image(io.BytesIO(data), where, max_pixels), images.sniff(data), data


def prepare(item: readers.Item, size: int, encode: str, quality: int,
            max_pixels: int = photos.MAX_PIXELS) -> Prepared | Skipped:
    """One input image -> the bytes a shard stores (runs in a pack worker)."""
    try:
        image, ext, data = open_item(item, max_pixels)
        width, height = image.size
        if encode == "keep" and ext and (not size or (width, height) == (size, size)):
            channels = images.channels_of(image.mode)
            image.verify()  # cheap integrity check (PNG CRCs); pixels stay encoded
            return Prepared(item.key, item.label, data, ext, width, height, channels)
        with photos.pixel_limit(max_pixels):  # checked above; Pillow's own limit would refuse again
            image = images.normalise_mode(image)
            if size:
                image = images.resize_crop(image, size)
        ext = images.encoded_ext(image, "png" if encode == "keep" else encode)
        return Prepared(item.key, item.label, images.encode(image, ext, quality), ext, *image.size,
                        images.channels_of(image.mode))
    except Exception as exc:  # Pillow raises many types for bad files
        return skipped(item, exc)


def prepare_crops(item: readers.Item, crop: int, count: int, seed: int, encode: str, quality: int,
                  max_pixels: int = photos.MAX_PIXELS) -> list[Prepared] | Skipped:
    """`count` random crop x crop crops of one input image, each encoded on its own (runs in a
    pack worker; the image is decoded once). An image smaller than the crop is skipped."""
    try:
        image, _, _ = open_item(item, max_pixels)
        width, height = image.size
        if width < crop or height < crop:
            return Skipped(item.key, f"{item.path or 'item ' + item.key}: {width}x{height} is smaller than "
                                     f"--crop {crop}", size=(width, height))
        with photos.pixel_limit(max_pixels):
            image = images.normalise_mode(image)
            image.load()
        ext = images.encoded_ext(image, "png" if encode == "keep" else encode)
        channels = images.channels_of(image.mode)
        boxes = photos.crop_boxes(width, height, crop, count, photos.crop_seed(seed, item.key))
        return [Prepared(f"{item.key}-{j:05d}", item.label, images.encode(image.crop(box), ext, quality), ext,
                         crop, crop, channels) for j, box in enumerate(boxes)]
    except Exception as exc:  # Pillow raises many types for bad files
        return skipped(item, exc)


class _ImageFacts:
    """What the index says about the images: one size, channels, extensions."""

    def __init__(self):
        self.size: tuple[int, int] | None = None
        self.channels, self.exts, self.skipped, self.max_label = 1, set(), 0, -1
        self.too_small = 0  # inputs smaller than the crop
        self.first_reason = ""  # why the first unreadable input was skipped
        self.largest_small: tuple[int, int] = (0, 0)

    def add(self, p: Prepared, where: str) -> None:
        if self.size is None:
            self.size = (p.width, p.height)
        elif (p.width, p.height) != self.size:
            raise DataError(f"{where}: images differ in size ({self.size[0]}x{self.size[1]} and "
                            f"{p.width}x{p.height}); pass --size N to resize and centre-crop them")
        self.channels = max(self.channels, p.channels)
        self.exts.add(p.ext)
        self.max_label = max(self.max_label, p.label)


# Images whose crops are shuffled together (photos.interleave): the memory of one block.
CROP_BLOCK_IMAGES = 64


def prepared_images(source: readers.ImageSource, opts: PackOptions, facts: "_ImageFacts") -> Iterator[Prepared]:
    """`source`'s images as the records to write: each whole (resized if asked), or with
    --crop its random crops, interleaved across images. Skipped inputs are counted in `facts`."""
    if opts.crop:
        work = partial(prepare_crops, crop=opts.crop, count=opts.crops_per_image, seed=opts.seed,
                       encode=opts.encode, quality=opts.quality, max_pixels=opts.max_pixels)
    else:
        work = partial(prepare, size=opts.size, encode=opts.encode, quality=opts.quality,
                       max_pixels=opts.max_pixels)

    def kept() -> Iterator[list[Prepared]]:
        for out in ordered_map(work, source.items(), opts.workers):
            if isinstance(out, Skipped) and out.bomb:
                raise DataError(out.reason)  # the pack's folder is removed: nothing half-written
            if isinstance(out, Skipped) and out.size is not None:
                facts.too_small += 1
                facts.largest_small = max(facts.largest_small, out.size, key=lambda s: s[0] * s[1])
                log.debug("skipped an image smaller than the crop: %s", out.reason)  # counted, summed up at the end
            elif isinstance(out, Skipped):
                facts.skipped += 1
                facts.first_reason = facts.first_reason or out.reason
                log.warning("skipped an unreadable image: %s", out.reason)
            else:
                yield out if isinstance(out, list) else [out]

    if opts.crop:
        yield from photos.interleave(kept(), CROP_BLOCK_IMAGES, opts.seed)
    else:
        for group in kept():
            yield from group


def check_crop_options(opts: PackOptions) -> None:
    if opts.crop < 0 or opts.crops_per_image < 1:
        raise DataError(f"--crop must be >= 0 and --crops-per-image >= 1, got {opts.crop} and {opts.crops_per_image}")
    if opts.crops_per_image > 1 and not opts.crop:
        raise DataError("--crops-per-image needs --crop SIZE")
    if opts.crop and opts.size:
        raise DataError("--crop and --size exclude each other: --crop cuts random crops at the images' own scale")
    if opts.max_pixels < 1:
        raise DataError(f"--max-pixels must be >= 1, got {opts.max_pixels}")


def pack_images(source: readers.ImageSource, out_dir: Path, opts: PackOptions) -> DatasetIndex:
    """Write `source`'s images into shards under `out_dir` (one image, or one crop, per record)."""
    check_crop_options(opts)
    writer = ShardWriter(out_dir, opts.shard_samples, opts.shard_bytes)
    facts = _ImageFacts()
    for out in prepared_images(source, opts, facts):
        facts.add(out, source.where)
        record = {"__key__": out.key, out.ext: out.data}
        if source.labelled:
            record.update({"cls": str(out.label).encode(), "__classes__": [out.label]})
        writer.add(record)
    if writer.num_samples == 0 and facts.too_small:
        width, height = facts.largest_small
        raise DataError(f"{source.where}: --crop {opts.crop} is larger than every image (the largest is "
                        f"{width}x{height}); choose a smaller --crop")
    if writer.num_samples == 0:
        raise DataError(f"{source.where}: none of the {facts.skipped} images could be read (the first: "
                        f"{facts.first_reason})")
    num_classes = max(len(source.classes), facts.max_label + 1) if source.labelled else 0
    width, height = facts.size
    fields = {"x": ";".join(sorted(facts.exts))}
    if source.labelled:
        fields["y"] = "cls"
    meta = {"name": opts.name or source.name, "kind": "image", "sample_shape": [facts.channels, height, width],
            "num_classes": num_classes,
            "classes": source.classes or [str(c) for c in range(num_classes)],
            "fields": fields, "source": source.where, "encoding": opts.encode, "skipped_inputs": facts.skipped,
            "preprocess": f"resize-crop{opts.size}" if opts.size else "none"}
    if opts.crop:
        meta.update({"preprocess": f"random-crop{opts.crop}", "crop": opts.crop,
                     "crops_per_image": opts.crops_per_image, "skipped_small_inputs": facts.too_small})
    meta.update(source.meta)
    return writer.finish(meta, num_classes)


def pack_mixture(name: str, out_dir: Path) -> DatasetIndex:
    mixture = builtin.MIXTURES[name]()
    meta = {"name": name, "kind": "points", "sample_shape": [2], "num_classes": mixture.num_modes,
            "fields": {"x": "pts.npy", "y": "cls.npy"}, "mixture": mixture.to_meta()}
    records = mixture_records(mixture, builtin.MIXTURE_POINTS, builtin.POINTS_PER_RECORD,
                              builtin.MIXTURE_DATA_SEED)
    return write_shards(records, out_dir, builtin.RECORDS_PER_SHARD, mixture.num_modes, meta)


def builtin_names() -> list[str]:
    return sorted([*builtin.MIXTURES, *builtin.IMAGES, *photos.PHOTO_SPLITS])


def photos_source(name: str, opts: PackOptions) -> readers.ImageSource:
    """builtin:photos or photos-eval: the photographs, to be packed as random crops."""
    files = photos.photo_files(name)
    source = readers.files_source(f"builtin:{name}", name, files, opts.shuffle, opts.seed)
    source.meta.update({"photos": [p.name for p in files], "photos_package": photos.PHOTOS_PACKAGE})
    return source


def builtin_photo_options(opts: PackOptions) -> PackOptions:
    """`opts` with the builtin photos' crops unless --crop asks for others."""
    if opts.crop:
        return opts
    return dataclasses.replace(opts, crop=photos.PHOTO_CROP, crops_per_image=photos.PHOTO_CROPS,
                               encode="png" if opts.encode == "keep" else opts.encode)


def pack_builtin(name: str, out_dir: Path) -> DatasetIndex:
    """Pack builtin dataset `name` into `out_dir` (which must not exist yet)."""
    if name in builtin.MIXTURES:
        return pack_mixture(name, out_dir)
    if name in builtin.IMAGES:
        opts = PackOptions(shard_samples=builtin.IMAGES[name].per_shard, encode="png", seed=builtin.MIXTURE_DATA_SEED)
        return pack_images(readers.builtin_image_source(name, opts.shuffle, opts.seed), out_dir, opts)
    if name in photos.PHOTO_SPLITS:
        opts = builtin_photo_options(PackOptions(shard_samples=photos.PHOTO_CROPS_PER_SHARD,
                                                 seed=builtin.MIXTURE_DATA_SEED))
        return pack_images(photos_source(name, opts), out_dir, opts)
    raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(builtin_names())})")


def open_source(src: str, opts: PackOptions, image_column: str | None = None,
                label_column: str | None = None) -> readers.ImageSource | str:
    """The reader for `src`, checked before anything is written (a builtin
    mixture, which is not made of images, is returned as its name)."""
    if src.startswith("builtin:"):
        name = src.split(":", 1)[1]
        if name in builtin.MIXTURES:
            return name
        if name in photos.PHOTO_SPLITS:
            return photos_source(name, opts)
        if name not in builtin.IMAGES:
            raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(builtin_names())})")
        return readers.builtin_image_source(name, opts.shuffle, opts.seed)
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(f"{src}: no such file or folder")
    if path.suffix == ".npz":
        return readers.npz_source(src, image_column, label_column, opts.shuffle, opts.seed)
    if readers.is_idx(path):
        return readers.idx_source(src, opts.shuffle, opts.seed)
    if path.suffix == ".parquet" or (path.is_dir() and _is_parquet_folder(path, image_column or label_column)):
        return readers.parquet_source(src, image_column or "image", label_column, opts.shuffle, opts.seed)
    if path.is_dir():
        return readers.folder_source(src, opts.shuffle, opts.seed)
    raise DataError(f"cannot pack {src}: expected an image folder, a Parquet file or folder, a .npz file, "
                    f"an IDX images file (*-images-idx3-ubyte[.gz]) or builtin:NAME")


def _is_parquet_folder(path: Path, asked: str | None) -> bool:
    """Read a folder as Parquet when asked (--image-column/--label-column name table
    columns) or when it holds more .parquet files than images; a stray table in an
    image folder does not turn it into a table."""
    tables = sum(1 for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if not tables:
        return False
    if asked:
        return True
    pictures = sum(1 for p in path.rglob("*") if p.name.lower().endswith(images.INPUT_SUFFIXES))
    if pictures >= tables:
        log.warning("%s holds %d images and %d .parquet file(s): packing the images (pass --image-column "
                    "to pack the tables instead)", path, pictures, tables)
        return False
    return True


def pack(src: str, out: Path, opts: PackOptions, image_column: str | None = None,
         label_column: str | None = None) -> DatasetIndex:
    """`gan-dist data pack`: any supported input -> shards + index.parquet at `out`."""
    if opts.encode not in ENCODINGS:
        raise DataError(f"--encode must be one of {', '.join(ENCODINGS)}, got {opts.encode!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; choose another --out or remove it")
    check_can_create(out)  # before reading the input: a bad --out is bad input, not a late failure
    check_crop_options(opts)
    if src.split(":", 1)[-1] in photos.PHOTO_SPLITS and src.startswith("builtin:"):
        opts = builtin_photo_options(opts)
    source = open_source(src, opts, image_column, label_column)
    result: list[DatasetIndex] = []
    if isinstance(source, str):
        fill = lambda tmp: result.append(pack_mixture(source, tmp))  # noqa: E731
    else:
        fill = lambda tmp: result.append(pack_images(source, tmp, opts))  # noqa: E731
    pack_atomically(out, fill)  # renaming onto an empty folder replaces it
    index = result[0]
    index.root = str(out)
    return index
