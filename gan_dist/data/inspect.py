"""`gan-dist data inspect`: what a packed dataset holds, whether its shards are
intact, and a picture of its first samples; `check_dataset`, the cheap check
a dry run makes before a run starts."""

from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gan_dist.data import fs, images, tar
from gan_dist.data.errors import DataError
from gan_dist.data.index import TAR_HEADER_BYTES, DatasetIndex
from gan_dist.data.stream import BadRecord, RecordDecoder, ShardReader

log = logging.getLogger("gan_dist.data")

# Shards probed at once over the network (a HEAD and a 512-byte read each).
CHECK_THREADS = 16


def describe(index: DatasetIndex) -> dict:
    """The index's facts as a JSON-able dict."""
    meta = index.meta
    counts = np.sum([s.class_counts for s in index.shards], axis=0) if meta.get("num_classes") else []
    names = meta.get("classes") or [str(c) for c in range(len(counts))]
    sizes = [s.num_samples for s in index.shards]
    return {
        "root": index.root, "name": meta.get("name"), "kind": meta.get("kind"),
        "sample_shape": meta.get("sample_shape"), "fields": meta.get("fields"),
        "shards": len(index.shards), "records": index.num_records, "samples": index.num_samples,
        "bytes": sum(s.num_bytes for s in index.shards),
        "samples_per_shard": [min(sizes), max(sizes)],
        "classes": {name: int(n) for name, n in zip(names, counts)},
        "encoding": meta.get("encoding"), "source": meta.get("source"),
    }


def lines(facts: dict) -> list[str]:
    shape = facts["sample_shape"]
    if facts["kind"] == "image":
        what = f"images {shape[1]}x{shape[2]}, {shape[0]} channel(s)"
    else:
        what = f"{facts['kind']} of shape {shape}"
    out = [
        f"dataset   {facts['name']} at {facts['root']}",
        f"samples   {facts['samples']:,} in {facts['records']:,} records, {facts['shards']} shards "
        f"({facts['samples_per_shard'][0]:,}..{facts['samples_per_shard'][1]:,} samples each), "
        f"{facts['bytes'] / 2**20:,.1f} MiB",
        f"data      {what}; members {', '.join(f'{k}=.{v}' for k, v in facts['fields'].items())}",
    ]
    if facts["classes"]:
        out.append(f"classes   {len(facts['classes'])}: "
                   + ", ".join(f"{name} {n:,}" for name, n in facts["classes"].items()))
    else:
        out.append("classes   none (unlabelled)")
    return out


def check_dataset(index: DatasetIndex) -> None:
    """What can be checked without reading the data, for a dry run: every field
    has a decoder, and every shard is there, starts with a valid tar header and
    is big enough for the records the index gives it. DataError names the first
    problem (and how many shards have one); a shard whose size differs from the
    index's but can hold its records is only warned about: it is damaged, and
    the stream reads it record by record. Costs a 512-byte read per shard (over
    the network one ranged GET, 16 shards at a time)."""
    RecordDecoder(index.meta["fields"], index.meta)  # DataError: a field with no decoder
    threads = 1 if all(fs.is_local(index.url(i)) for i in range(len(index.shards))) else CHECK_THREADS
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda i: probe_shard(index, i), range(len(index.shards))))
    fatal = [(i, problem) for i, (problem, damaged) in enumerate(found) if problem and not damaged]
    for i, (problem, damaged) in enumerate(found):
        if damaged:
            log.warning("%s: %s", index.url(i), problem)
    if fatal:
        i, problem = fatal[0]
        more = f" (and {len(fatal) - 1} more shard(s) with problems)" if len(fatal) > 1 else ""
        raise DataError(f"{index.url(i)}: {problem}{more}")


def probe_shard(index: DatasetIndex, i: int) -> tuple[str, bool]:
    """('', False) if shard i looks sound from its size and first header, else
    (the problem, whether it is only damage the stream can read past)."""
    url, info = index.url(i), index.shards[i]
    try:
        head, size = fs.read_head(url, tar.BLOCK)
    except FileNotFoundError:
        return "missing", False
    except OSError as exc:
        return f"cannot read ({exc})", False
    if size is None:
        size = info.num_bytes  # a server that does not say: the header check still runs
    if info.num_records * TAR_HEADER_BYTES > size:
        return (f"{size:,} bytes cannot hold the {info.num_records:,} records the index claims "
                f"(a record takes at least {TAR_HEADER_BYTES} bytes)"), False
    try:
        if info.num_records:
            tar.check_header(head)
    except tar.TarError as exc:
        return f"not a tar (its first header: {exc})", False
    if size != info.num_bytes:
        return (f"damaged: {size:,} bytes, the index says {info.num_bytes:,}; its records will be read one by "
                f"one and those that do not decode skipped"), True
    return "", False


def verify_shard(index: DatasetIndex, i: int) -> str:
    """'' if shard i has the index's sha256 and record count, else the problem."""
    url, info = index.url(i), index.shards[i]
    try:
        data = fs.read_bytes(url)
    except OSError as exc:
        return f"cannot read ({type(exc).__name__}: {exc})"
    if hashlib.sha256(data).hexdigest() != info.sha256:
        return f"checksum mismatch ({len(data):,} bytes, index says {info.num_bytes:,})"
    try:
        count = sum(1 for _ in tar.records(io.BytesIO(data)))
    except tar.TarError as exc:
        return f"unreadable tar ({exc})"
    if count != info.num_records:
        return f"{count} records, index says {info.num_records}"
    return ""


def first_samples(index: DatasetIndex, n: int) -> dict[str, np.ndarray]:
    """Decoded arrays of (up to) the first `n` readable samples, in shard order."""
    reader, decode = ShardReader(index, verify=False), RecordDecoder(index.meta["fields"], index.meta)
    order = np.arange(len(index.shards))
    bounds = np.cumsum([0] + [s.num_records for s in index.shards])
    parts: dict[str, list] = {name: [] for name in decode.fields}
    rows, position = 0, 0
    try:
        while rows < n and position < index.num_records:
            for raw in reader.read(order, bounds, position, position + 1):
                try:
                    arrays = decode(raw) if isinstance(raw, dict) else {}
                except BadRecord:
                    arrays = {}
                for name, array in arrays.items():
                    parts[name].append(array)
                rows += len(next(iter(arrays.values()))) if arrays else 0
            position += 1
    finally:
        reader.close()
    return {name: np.concatenate(chunks)[:n] for name, chunks in parts.items() if chunks}


def preview_png(index: DatasetIndex, n: int = 64) -> bytes:
    """A grid of the first `n` images, or a scatter plot of the first 2000 points."""
    is_image = index.meta.get("kind") == "image"
    samples = first_samples(index, n if is_image else 2000)
    if "x" not in samples:
        raise ValueError("no readable samples to preview")
    if is_image:
        return images.grid_png(samples["x"], cols=int(np.ceil(np.sqrt(len(samples["x"])))))
    from gan_dist.visualize import scatter_png

    return scatter_png(samples["x"][:, :2], np.zeros((0, 2), dtype=np.float32))
