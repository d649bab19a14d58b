"""Open dataset files by URL, in-process: no curl, no shell.

- a path or `file://` URL: the local filesystem;
- `http://`, `https://`: fsspec's HTTP filesystem (aiohttp), streamed;
- any other scheme (`s3://`, `gs://`, `hdfs://`, ...): pyarrow.fs. An
  S3-compatible server (MinIO, Ceph, moto) is reached by setting
  AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), or with
  `?endpoint_override=HOST:PORT&scheme=http` on the URL.

A URL may carry a query (pyarrow's S3 options); `join` keeps it at the end
when naming a file inside a folder URL.
"""

from __future__ import annotations

import functools
import os
from typing import BinaryIO
from urllib.parse import urlsplit

# Bytes fetched per read from a remote stream: big enough that per-request
# latency is amortised, small enough to keep one per loader worker.
REMOTE_BLOCK = 8 << 20


def scheme(url: str) -> str:
    """'' for a local path (a one-letter scheme is a Windows drive)."""
    s = urlsplit(url).scheme
    return s.lower() if len(s) > 1 else ""


def is_local(url: str) -> bool:
    return scheme(url) in ("", "file")


def local_path(url: str) -> str:
    return os.path.expanduser(url[len("file://"):] if url.startswith("file://") else url)


def join(root: str, name: str) -> str:
    """`name` inside folder `root`, keeping root's query string last."""
    if not root or scheme(name) or name.startswith("/"):
        return name  # already a full path or URL
    base, sep, query = root.partition("?")
    return f"{base.rstrip('/')}/{name}" + (f"?{query}" if sep else "")


def split(url: str) -> tuple[str, str]:
    """(folder URL, file name): the inverse of `join`."""
    base, sep, query = url.partition("?")
    folder, _, name = base.rstrip("/").rpartition("/")
    return folder + (f"?{query}" if sep else ""), name


def open_stream(url: str) -> BinaryIO:
    """A binary file object for reading `url` front to back."""
    kind = scheme(url)
    if kind in ("", "file"):
        return open(local_path(url), "rb")
    if kind in ("http", "https"):
        return _http().open(url, "rb", block_size=0)  # block_size 0: one streamed GET
    fs, path = _pyarrow_fs(url)
    return fs.open_input_stream(path, buffer_size=REMOTE_BLOCK)


def read_bytes(url: str) -> bytes:
    with open_stream(url) as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _http():
    import fsspec

    return fsspec.filesystem("http")


def _pyarrow_fs(url: str):
    """(filesystem, path): one filesystem per folder, so an S3 client is made
    once per dataset and process, not once per shard."""
    folder, name = split(url)
    fs, folder_path = _pyarrow_folder(folder)
    return fs, f"{folder_path.rstrip('/')}/{name}"


@functools.lru_cache(maxsize=64)
def _pyarrow_folder(folder: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(folder)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
        raise OSError(f"cannot open {folder}: {exc}") from None
