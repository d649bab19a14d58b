"""`gan-dist data ...`: pack an image collection into shards, inspect a dataset.

Bad input raises DataError, which `gan_dist.cli.main` prints on one line and
turns into exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import sys
import time
from pathlib import Path

from gan_dist.data.errors import DataError
from gan_dist.data.pack import ENCODINGS, PackOptions, builtin_names, check_can_create, pack, remove_empty

PACK_SOURCES = f"""SRC is one of:
  an image folder     one subfolder per class (labels in sorted folder order), or images directly in it
  Parquet             a .parquet file, or a folder of them (a folder that holds more images than
                      .parquet files is an image folder unless --image-column/--label-column is given);
                      an image-bytes column and an optional label column (nulls and negatives refused)
  .npz                arrays of uint8 images [N,H,W(,C)] or [N,C,H,W] and optional integer labels
  IDX (MNIST format)  PREFIX-images-idx3-ubyte[.gz], its labels PREFIX-labels-idx1-ubyte[.gz] read from
                      beside it (unlabelled if there is none), or a folder holding one such pair;
                      MNIST, KMNIST, EMNIST and Fashion-MNIST files (EMNIST's images are stored
                      transposed and are packed as stored)
  builtin:NAME        {', '.join(builtin_names())}
                      (fashion-mnist[-test]: Debian's dataset-fashion-mnist files, each 28x28 image
                      padded with 2 black pixels a side to 32x32; photos[-eval]: Debian's mate-backgrounds
                      photographs, training and held-out, as 1024 random 96x96 crops each unless --crop)

The dataset is written into a temporary folder beside --out and renamed into place when complete."""

SIZE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def byte_size(text: str) -> int:
    """'64MiB', '100MB', '1G', '4096' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or ""])


def register(commands) -> None:
    """Add `data pack` and `data inspect` to the top-level subcommands."""
    data = commands.add_parser("data", help="pack and inspect datasets (WebDataset shards + index.parquet)")
    sub = data.add_subparsers(dest="data_command", required=True)
    defaults = PackOptions()

    pack_cmd = sub.add_parser("pack", help="pack an image folder, Parquet, .npz, IDX or builtin:NAME into shards",
                              description=PACK_SOURCES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pack_cmd.add_argument("src", metavar="SRC", help="what to pack (see above)")
    pack_cmd.add_argument("--out", required=True, type=Path, help="dataset folder to create (must not exist, or be empty)")
    pack_cmd.add_argument("--shard-samples", type=int, default=defaults.shard_samples,
                          help="samples per shard at most (default %(default)s)")
    pack_cmd.add_argument("--shard-bytes", type=byte_size, default=defaults.shard_bytes,
                          help="bytes per shard at most, e.g. 64MiB (default 128MiB)")
    pack_cmd.add_argument("--size", type=int, default=0,
                          help="resize (shorter side) and centre-crop every image to SIZE x SIZE")
    pack_cmd.add_argument("--crop", type=int, default=0, metavar="SIZE",
                          help="instead of whole images, random SIZE x SIZE crops of each (images smaller than "
                               "SIZE are skipped and counted); crops of different images are interleaved")
    pack_cmd.add_argument("--crops-per-image", type=int, default=1, metavar="K",
                          help="with --crop: crops cut from each image, at positions seeded by --seed and the "
                               "image (default 1)")
    pack_cmd.add_argument("--max-pixels", type=int, default=defaults.max_pixels, metavar="N",
                          help="refuse an input image of more than N pixels before decoding it: the pack ends "
                               "(decompression bombs; default %(default)s)")
    pack_cmd.add_argument("--encode", choices=ENCODINGS, default="keep",
                          help="keep the input's PNG/JPEG/WebP bytes (others become PNG), or re-encode all; "
                               "ppm (PGM/PPM, uncompressed) decodes fastest")
    pack_cmd.add_argument("--quality", type=int, default=defaults.quality,
                          help="JPEG/WebP quality (WebP 100 is lossless; default %(default)s)")
    pack_cmd.add_argument("--workers", type=int, default=1, help="processes that decode/resize/encode")
    pack_cmd.add_argument("--image-column", help="Parquet column (.npz array) of images (default image)")
    pack_cmd.add_argument("--label-column", help="Parquet column (.npz array) of labels (default label, if any)")
    pack_cmd.add_argument("--no-shuffle", action="store_true", help="keep the input order in the shards")
    pack_cmd.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    pack_cmd.add_argument("--name", default="", help="dataset name in the index (default: the input's name)")
    pack_cmd.set_defaults(func=cmd_pack)

    inspect_cmd = sub.add_parser("inspect", help="counts, classes and image size of a dataset; check or verify shards",
                                 description="Prints what the index says and checks each shard cheaply (there, a tar, "
                                             "big enough for its records); --verify reads every shard whole. "
                                             "Remote reads time out after GAN_DIST_IO_TIMEOUT seconds (default 60), "
                                             "retried GAN_DIST_IO_RETRIES times (default 3).")
    inspect_cmd.add_argument("source", help="dataset folder or URL (file://, http(s)://, s3://), or builtin:NAME")
    inspect_cmd.add_argument("--verify", action="store_true", help="check every shard's sha256 and record count")
    inspect_cmd.add_argument("--preview", type=Path, metavar="FILE.png", help="write a grid of the first samples")
    inspect_cmd.add_argument("--json", action="store_true", help="print the facts as JSON")
    inspect_cmd.set_defaults(func=cmd_inspect)


def _quiet_warnings() -> None:
    logging.basicConfig(format="gan-dist: warning: %(message)s", level=logging.WARNING, stream=sys.stderr)


def cmd_pack(args) -> int:
    _quiet_warnings()
    if args.shard_samples < 1 or args.shard_bytes < 1 or args.size < 0 or args.workers < 1:
        raise DataError("--shard-samples, --shard-bytes and --workers must be >= 1, --size >= 0")
    if not 1 <= args.quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {args.quality}")
    opts = PackOptions(shard_samples=args.shard_samples, shard_bytes=args.shard_bytes, size=args.size,
                       encode=args.encode, quality=args.quality, workers=args.workers,
                       shuffle=not args.no_shuffle, seed=args.seed, name=args.name, crop=args.crop,
                       crops_per_image=args.crops_per_image, max_pixels=args.max_pixels)
    t0 = time.perf_counter()
    index = pack(args.src, args.out, opts, args.image_column, args.label_column)
    meta = index.meta
    skipped = f", skipped {meta['skipped_inputs']} unreadable" if meta.get("skipped_inputs") else ""
    if meta.get("skipped_small_inputs"):
        skipped += f", skipped {meta['skipped_small_inputs']} smaller than --crop"
    print(f"packed {index.num_samples:,} samples ({meta.get('num_classes', 0)} classes{skipped}) into "
          f"{len(index.shards)} shards, {sum(s.num_bytes for s in index.shards) / 2**20:,.1f} MiB, "
          f"in {time.perf_counter() - t0:.1f} s: {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from gan_dist.data import inspect  # deferred: the stream and its decoders load only for inspect
    from gan_dist.data.sources import resolve_source

    _quiet_warnings()
    if args.preview:
        check_output_file(args.preview, "--preview")
    index = resolve_source(args.source)
    facts = inspect.describe(index)
    if args.verify:  # reads every shard whole: a superset of check_dataset, reported shard by shard
        problems = {index.shards[i].shard: p for i in range(len(index.shards)) if (p := inspect.verify_shard(index, i))}
        facts["verify"] = {"shards_ok": len(index.shards) - len(problems), "problems": problems}
    else:
        inspect.check_dataset(index)
    if args.preview:
        try:
            png = inspect.preview_png(index)
        except ValueError as exc:
            raise DataError(f"--preview: {exc}") from None
        write_output_file(args.preview, png, "--preview")
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print("\n".join(inspect.lines(facts)))
        if args.verify:
            print(f"verify    {facts['verify']['shards_ok']} of {len(index.shards)} shards intact")
            for shard, problem in facts["verify"]["problems"].items():
                print(f"  {shard}: {problem}")
        if args.preview:
            print(f"preview   {args.preview}")
    return 1 if args.verify and facts["verify"]["problems"] else 0


def check_output_file(path: Path, flag: str) -> None:
    """`path` can become a file: not a folder, not under a file, in a writable folder."""
    if path.is_dir():
        raise DataError(f"{flag} {path} is a folder; name a file, e.g. {path / 'preview.png'}")
    check_can_create(path)


def write_output_file(path: Path, data: bytes, flag: str) -> None:
    """Write `data` to `path` whole or not at all (a temporary sibling renamed into place)."""
    made = check_can_create(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        remove_empty(made)
        raise DataError(f"{flag} {path}: cannot write it ({exc.strerror or exc})") from None
