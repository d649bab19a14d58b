"""Bad input to the data plane, one row per case: the command line a user would type,
the exit code, a phrase the one-line error must hold, and nothing written.

Each row runs `python -m gan_dist ...` in a subprocess (tests/conftest.py run_cli).
"Nothing written" compares a listing (name, size, mtime) of the row's folder and of
the builtin cache before and after: a `.tmp-*` left behind counts as written.
Remote reads run with GAN_DIST_IO_TIMEOUT=1 and GAN_DIST_IO_RETRIES=1, so the
server rows take seconds.

Read-only folders: the tests run as root, who ignores mode bits, so a chmod'ed
folder proves nothing here. The rows use a path under a regular file, and /sys
(sysfs: no mkdir there even for root) for a folder that really refuses writes.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_cli
from data_helpers import image_dataset, random_images
from gan_dist.data.index import INDEX_FILE, META_KEY, SCHEMA, DatasetIndex

pytestmark = pytest.mark.unit

REMOTE_ENV = {"GAN_DIST_IO_TIMEOUT": "1", "GAN_DIST_IO_RETRIES": "1"}


# Servers on 127.0.0.1 ---------------------------------------------------------------------

class _Files(http.server.SimpleHTTPRequestHandler):
    """Static files; a GET or HEAD of a path containing 'stall' gets no answer until shutdown."""
    stop = threading.Event()

    def log_message(self, *args):
        pass

    def send_head(self):
        if "stall" in self.path:
            self.stop.wait(30)
            return None
        return super().send_head()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A packed dataset, a file server over its parent folder, and a server that
    accepts connections and never answers."""
    root = tmp_path_factory.mktemp("bad-input")
    image_dataset(root / "ds", 12, per_shard=4)
    shutil.copytree(root / "ds", root / "stall-ds")  # served, but its shards stall
    index = DatasetIndex.read(str(root / "stall-ds"), str(root / "stall-ds" / INDEX_FILE))
    for info in index.shards:
        (root / "stall-ds" / info.shard).rename(root / "stall-ds" / f"stall-{info.shard}")
        info.shard = f"stall-{info.shard}"
    _write_index(root / "stall-ds", [vars(s) for s in index.shards], _meta_bytes(index.meta))

    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    files.daemon_threads = True
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold():  # accept and say nothing
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:
                return

    threads = [threading.Thread(target=files.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
               threading.Thread(target=hold, daemon=True)]
    for t in threads:
        t.start()
    yield World(root, f"http://127.0.0.1:{files.server_address[1]}", f"http://127.0.0.1:{silent.getsockname()[1]}")
    _Files.stop.set()
    files.shutdown()
    files.server_close()
    silent.close()
    for conn in held:
        conn.close()


@dataclass
class World:
    root: Path  # holds ds/ (a good 12-image dataset, 3 shards) and stall-ds/
    http: str  # serves root
    silent: str  # accepts, never answers


# Ways to spoil a dataset -----------------------------------------------------------------

def _meta_bytes(meta) -> bytes:
    return json.dumps(meta).encode()


def _write_index(folder: Path, rows: list[dict], meta: bytes) -> None:
    """An index.parquet with these rows (column types as given) and raw metadata bytes."""
    table = pa.Table.from_pylist(rows) if rows else pa.Table.from_pylist([], schema=SCHEMA)
    pq.write_table(table.replace_schema_metadata({META_KEY: meta}), folder / INDEX_FILE)


def spoiled(tmp: Path, world: World, rows=None, meta=None, shards=None) -> Path:
    """A copy of the good dataset at tmp/ds, its index rows and metadata changed by the callables given."""
    ds = tmp / "ds"
    shutil.copytree(world.root / "ds", ds)
    index = DatasetIndex.read(str(ds), str(ds / INDEX_FILE))
    table_rows = [vars(s) for s in index.shards]
    if rows:
        rows(table_rows)
    new_meta = dict(index.meta)
    if meta:
        new_meta = meta(new_meta)
    _write_index(ds, table_rows, new_meta if isinstance(new_meta, bytes) else _meta_bytes(new_meta))
    if shards:
        shards(ds)
    return ds


def _set(key, value):
    def change(rows):
        rows[0][key] = value
    return change


def _as_strings(key):
    def change(rows):  # the whole column becomes text: a Parquet column has one type
        for row in rows:
            row[key] = str(row[key])
    return change


def _meta_set(key, value):
    def change(meta):
        return dict(meta, **{key: value})
    return change


def _garbage_shard(ds: Path) -> None:
    path = ds / "shard-000001.tar"
    path.write_bytes(b"\x07" * path.stat().st_size)  # same size: only the first header shows it


def _parquet(tmp: Path, labels: list) -> Path:
    pixels, _ = random_images(len(labels), size=4)
    from PIL import Image
    import io

    def png(p):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        return buf.getvalue()

    pq.write_table(pa.table({"image": [png(p) for p in pixels], "label": pa.array(labels, pa.int64())}),
                   tmp / "t.parquet")
    return tmp / "t.parquet"


def _npy_named_npz(tmp: Path) -> Path:
    np.save(tmp / "d.npy", random_images(3)[0])
    (tmp / "d.npy").rename(tmp / "d.npz")
    return tmp / "d.npz"


def _a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("a file, not a folder")
    return tmp / "file"


def _images(tmp: Path) -> Path:
    np.savez(tmp / "d.npz", images=random_images(3)[0])
    return tmp / "d.npz"


def _photos(tmp: Path) -> Path:
    """A folder of two small photos, 30x20 and 25x40."""
    folder = tmp / "photos"
    folder.mkdir()
    for i, (width, height) in enumerate([(30, 20), (25, 40)]):
        Image.fromarray(random_images(1, size=max(width, height))[0][0, :height, :width]).save(folder / f"p{i}.png")
    return folder


def _not_parquet_index(tmp: Path) -> Path:
    (tmp / "ds").mkdir()
    (tmp / "ds" / INDEX_FILE).write_bytes(b"PAR1 this is not Parquet")
    return tmp / "ds"


# The table ----------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    argv: Callable[[Path, World], list[str]]
    says: str
    code: int = 2
    env: dict = field(default_factory=dict)
    cache: Callable[[Path], Path] | None = None  # GAN_DIST_CACHE for this row (default: the session's)


def inspect(make: Callable[[Path, World], object]) -> Callable[[Path, World], list[str]]:
    return lambda tmp, w: ["data", "inspect", str(make(tmp, w))]


def dry_run(make: Callable[[Path, World], object]) -> Callable[[Path, World], list[str]]:
    return lambda tmp, w: ["train", "--dry-run", "--no-ray", "--storage", str(tmp / "runs"), "--name", "r",
                           "--set", f"data.source={make(tmp, w)}"]


SPOILS = {  # index spoilt in one way -> what the error says
    "meta-empty-object": (dict(meta=lambda m: {}), "metadata kind must be one of points, image"),
    "meta-list": (dict(meta=lambda m: b"[]"), "the index metadata must be a JSON object"),
    "meta-not-json": (dict(meta=lambda m: b"{nope"), "metadata is not JSON"),
    "num-records-string": (dict(rows=_as_strings("num_records")), "num_records must be an integer >= 0"),
    "sample-shape-ab": (dict(meta=_meta_set("sample_shape", "ab")), "sample_shape must be a list of sizes"),
    "num-records-1e12": (dict(rows=_set("num_records", 10**12)), "1,000,000,000,000 records cannot fit in"),
    "num-classes-huge": (dict(meta=_meta_set("num_classes", 10**12)), "num_classes must be an integer in"),
    "shard-etc-passwd": (dict(rows=_set("shard", "/etc/passwd")), "a shard name must be a relative path"),
    "shard-dotdot": (dict(rows=_set("shard", "../x.tar")), "a shard name must be a relative path"),
    "shard-url": (dict(rows=_set("shard", "http://127.0.0.1:1/x.tar")), "a shard name must be a relative path"),
}

ROWS = [
    *[Row(f"inspect-{name}", inspect(lambda tmp, w, s=spoil: spoiled(tmp, w, **s)), says)
      for name, (spoil, says) in SPOILS.items()],
    *[Row(f"dry-run-{name}", dry_run(lambda tmp, w, s=spoil: spoiled(tmp, w, **s)), says)
      for name, (spoil, says) in SPOILS.items() if name in ("meta-empty-object", "meta-list", "num-records-string",
                                                            "sample-shape-ab", "num-records-1e12")],
    # counts that lie together with the sizes: only the shard files tell (check_dataset)
    Row("inspect-counts-and-sizes-lie", inspect(lambda tmp, w: spoiled(
        tmp, w, rows=lambda r: r[0].update(num_records=10**12, num_bytes=10**15))),
        "bytes cannot hold the 1,000,000,000,000 records the index claims"),
    Row("inspect-shard-not-a-tar", inspect(lambda tmp, w: spoiled(tmp, w, shards=_garbage_shard)), "not a tar"),
    Row("inspect-shard-missing", inspect(lambda tmp, w: spoiled(
        tmp, w, shards=lambda ds: (ds / "shard-000002.tar").unlink())), "shard-000002.tar: missing"),
    Row("inspect-field-without-decoder", inspect(lambda tmp, w: spoiled(
        tmp, w, meta=_meta_set("fields", {"x": "bmp", "y": "cls"}))), "no decoder for .bmp members"),
    # the same, found by a dry run (and by any run, before it starts)
    Row("dry-run-counts-and-sizes-lie", dry_run(lambda tmp, w: spoiled(
        tmp, w, rows=lambda r: r[0].update(num_records=10**12, num_bytes=10**15))),
        "bytes cannot hold the 1,000,000,000,000 records the index claims"),
    Row("dry-run-shard-not-a-tar", dry_run(lambda tmp, w: spoiled(tmp, w, shards=_garbage_shard)), "not a tar"),
    Row("dry-run-field-without-decoder", dry_run(lambda tmp, w: spoiled(
        tmp, w, meta=_meta_set("fields", {"x": "bmp", "y": "cls"}))), "no decoder for .bmp members"),
    Row("inspect-index-not-parquet", inspect(lambda tmp, w: _not_parquet_index(tmp)), "unreadable index"),
    # patterns in data.source
    Row("inspect-brace-billion", lambda tmp, w: ["data", "inspect", f"{w.root}/ds/shard-{{000000000..999999999}}.tar"],
        "names 1,000,000,000 shards, but"),
    Row("dry-run-brace-billion", dry_run(lambda tmp, w: f"{w.root}/ds/shard-{{000000000..999999999}}.tar"),
        "names 1,000,000,000 shards, but"),
    Row("dry-run-brace-folders", dry_run(lambda tmp, w: f"{w.root}/ds{{0..99999}}"),
        "expands to 100,000 names, more than 1024"),
    Row("inspect-brace-unbalanced", lambda tmp, w: ["data", "inspect", f"{w.root}/ds/shard-{{0..2.tar"],
        "unbalanced braces"),
    Row("inspect-brace-names-missing-shard", lambda tmp, w: ["data", "inspect", f"{w.root}/ds/shard-{{000001..000003}}.tar"],
        "shard-000003.tar matches no shard"),
    # remote sources: refused, silent, stalling
    Row("inspect-connection-refused", lambda tmp, w: ["data", "inspect", "http://127.0.0.1:1/ds"],
        "connection refused", env=REMOTE_ENV),
    Row("inspect-silent-server", lambda tmp, w: ["data", "inspect", f"{w.silent}/ds"],
        "no answer within 1 s (GAN_DIST_IO_TIMEOUT)", env=REMOTE_ENV),
    Row("dry-run-silent-server", dry_run(lambda tmp, w: f"{w.silent}/ds"),
        "no answer within 1 s (GAN_DIST_IO_TIMEOUT)", env=REMOTE_ENV),
    Row("inspect-stalled-shards", lambda tmp, w: ["data", "inspect", f"{w.http}/stall-ds"],
        "no answer within 1 s", env=REMOTE_ENV),
    Row("inspect-missing-over-http", lambda tmp, w: ["data", "inspect", f"{w.http}/nothing"],
        "no index.parquet there", env=REMOTE_ENV),
    Row("inspect-bad-timeout-setting", lambda tmp, w: ["data", "inspect", f"{w.http}/ds"],
        "GAN_DIST_IO_TIMEOUT must be a number of seconds > 0", env={"GAN_DIST_IO_TIMEOUT": "soon"}),
    # pack: inputs
    Row("pack-parquet-null-label", lambda tmp, w: ["data", "pack", str(_parquet(tmp, [0, None, 1])), "--out",
                                                    str(tmp / "out")], "row 1 has label null"),
    Row("pack-parquet-negative-label", lambda tmp, w: ["data", "pack", str(_parquet(tmp, [0, 1, -3])), "--out",
                                                        str(tmp / "out")], "row 2 has label -3"),
    Row("pack-npy-named-npz", lambda tmp, w: ["data", "pack", str(_npy_named_npz(tmp)), "--out", str(tmp / "out")],
        "not a .npz archive"),
    # pack: random crops of photos, the pixel limit
    Row("pack-crop-larger-than-every-photo", lambda tmp, w: ["data", "pack", str(_photos(tmp)), "--out",
                                                              str(tmp / "out"), "--crop", "96"],
        "--crop 96 is larger than every image (the largest is 25x40)"),
    Row("pack-crop-and-size", lambda tmp, w: ["data", "pack", str(_photos(tmp)), "--out", str(tmp / "out"),
                                               "--crop", "8", "--size", "8"], "--crop and --size exclude each other"),
    Row("pack-crops-per-image-without-crop", lambda tmp, w: ["data", "pack", str(_photos(tmp)), "--out",
                                                              str(tmp / "out"), "--crops-per-image", "4"],
        "--crops-per-image needs --crop SIZE"),
    Row("pack-every-image-over-the-pixel-limit", lambda tmp, w: ["data", "pack", str(_photos(tmp)), "--out",
                                                                  str(tmp / "out"), "--max-pixels", "500"],
        "over the limit of 500 (a decompression bomb?)"),
    Row("pack-builtin-photos-not-installed", lambda tmp, w: ["data", "pack", "builtin:photos", "--out",
                                                              str(tmp / "out")],
        "apt-get install mate-backgrounds", env={"GAN_DIST_PHOTOS_DIR": "/nonexistent"}),
    # pack: where it writes
    Row("pack-out-under-a-file", lambda tmp, w: ["data", "pack", str(_images(tmp)), "--out",
                                                  str(_a_file(tmp) / "ds")], "is a file, not a folder"),
    Row("pack-out-deep-under-a-file", lambda tmp, w: ["data", "pack", str(_images(tmp)), "--out",
                                                       str(_a_file(tmp) / "a" / "b" / "ds")], "is a file, not a folder"),
    Row("pack-out-read-only-folder", lambda tmp, w: ["data", "pack", str(_images(tmp)), "--out",
                                                      "/sys/gan-dist-test-ds"], "cannot create /sys/gan-dist-test-ds"),
    Row("builtin-cache-under-a-file", lambda tmp, w: ["data", "inspect", "builtin:digits"],
        "is a file, not a folder (the builtin cache", cache=lambda tmp: _a_file(tmp) / "cache"),
    # inspect --preview: where it writes
    Row("preview-to-a-folder", lambda tmp, w: ["data", "inspect", str(w.root / "ds"), "--preview", str(tmp)],
        "is a folder; name a file"),
    Row("preview-under-a-file", lambda tmp, w: ["data", "inspect", str(w.root / "ds"), "--preview",
                                                 str(_a_file(tmp) / "p.png")], "is a file, not a folder"),
]


def listing(*roots: Path) -> list[tuple[str, int, int]]:
    out = []
    for root in roots:
        if root.exists():
            out += [(str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))]
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, world: World, tmp_path: Path, cache_dir: Path):
    case = tmp_path / "case"
    case.mkdir()
    argv = row.argv(case, world)
    cache = row.cache(case) if row.cache else cache_dir
    watched = (case, cache_dir, world.root)
    before = listing(*watched)
    res = run_cli(*argv, cache=cache, env=row.env, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == row.code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("gan-dist: error:"), res.stderr[-3000:]
    assert row.says in lines[0], lines[0]
    assert listing(*watched) == before, "something was written"
