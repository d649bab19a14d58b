"""`gan-dist data ...`: pack an image collection into shards, inspect a dataset.

Bad input raises DataError, which `gan_dist.cli.main` prints on one line and
turns into exit code 2.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

from gan_dist.data.errors import DataError
from gan_dist.data.pack import ENCODINGS, PackOptions, builtin_names, pack

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

    pack_cmd = sub.add_parser("pack", help="pack an image folder, Parquet, .npz or builtin:NAME into shards")
    pack_cmd.add_argument("src", help=f"image folder (one subfolder per class, or flat), Parquet file or folder, "
                                      f".npz file, or builtin:NAME ({', '.join(builtin_names())})")
    pack_cmd.add_argument("--out", required=True, type=Path, help="dataset folder to create (must not exist, or be empty)")
    pack_cmd.add_argument("--shard-samples", type=int, default=defaults.shard_samples,
                          help="samples per shard at most (default %(default)s)")
    pack_cmd.add_argument("--shard-bytes", type=byte_size, default=defaults.shard_bytes,
                          help="bytes per shard at most, e.g. 64MiB (default 128MiB)")
    pack_cmd.add_argument("--size", type=int, default=0,
                          help="resize (shorter side) and centre-crop every image to SIZE x SIZE")
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

    inspect_cmd = sub.add_parser("inspect", help="counts, classes and image size of a dataset; verify shards")
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
                       shuffle=not args.no_shuffle, seed=args.seed, name=args.name)
    t0 = time.perf_counter()
    index = pack(args.src, args.out, opts, args.image_column, args.label_column)
    meta = index.meta
    skipped = f", skipped {meta['skipped_inputs']} unreadable" if meta.get("skipped_inputs") else ""
    print(f"packed {index.num_samples:,} samples ({meta.get('num_classes', 0)} classes{skipped}) into "
          f"{len(index.shards)} shards, {sum(s.num_bytes for s in index.shards) / 2**20:,.1f} MiB, "
          f"in {time.perf_counter() - t0:.1f} s: {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from gan_dist.data import inspect
    from gan_dist.data.sources import resolve_source

    _quiet_warnings()
    index = resolve_source(args.source)
    facts = inspect.describe(index)
    if args.verify:
        problems = {index.shards[i].shard: p for i in range(len(index.shards)) if (p := inspect.verify_shard(index, i))}
        facts["verify"] = {"shards_ok": len(index.shards) - len(problems), "problems": problems}
    if args.preview:
        try:
            png = inspect.preview_png(index)
        except ValueError as exc:
            raise DataError(f"--preview: {exc}") from None
        args.preview.parent.mkdir(parents=True, exist_ok=True)
        args.preview.write_bytes(png)
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
