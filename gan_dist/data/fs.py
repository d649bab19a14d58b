"""Open dataset files by URL, in-process: no curl, no shell.

- a path or `file://` URL: the local filesystem;
- `http://`, `https://`: the standard library's HTTP client, streamed;
- any other scheme (`s3://`, `gs://`, `hdfs://`, ...): pyarrow.fs. An
  S3-compatible server (MinIO, Ceph, moto) is reached by setting
  AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), or with
  `?endpoint_override=HOST:PORT&scheme=http` on the URL.

A URL may carry a query (pyarrow's S3 options); `join` keeps it at the end
when naming a file inside a folder URL.

Every remote read has a time limit and bounded retries, so a server that
accepts connections and never answers ends in an error naming the URL, not
in a hang: GAN_DIST_IO_TIMEOUT (seconds without a byte, default 60) and
GAN_DIST_IO_RETRIES (further attempts after a failed one, default 3, with
waits of 0.5 s, 1 s, 2 s, ...). An HTTP stream that breaks mid-shard resumes
where it stopped (a Range request), within the same retry budget. For S3 the
same limits go to the AWS SDK (connect timeout, request timeout, standard
retry strategy).
"""

from __future__ import annotations

import functools
import http.client
import io
import os
import socket
import time
import urllib.error
import urllib.request
from typing import BinaryIO, Callable, TypeVar
from urllib.parse import urlsplit

from gan_dist import env

# Bytes fetched per read from a remote stream: big enough that per-request
# latency is amortised, small enough to keep one per loader worker.
REMOTE_BLOCK = 8 << 20

TIMEOUT_ENV, RETRIES_ENV = "GAN_DIST_IO_TIMEOUT", "GAN_DIST_IO_RETRIES"
DEFAULT_TIMEOUT_SECONDS, DEFAULT_RETRIES = 60.0, 3
FIRST_BACKOFF_SECONDS = 0.5
# HTTP statuses worth another try: the server or a proxy is busy or restarting.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)

T = TypeVar("T")


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


# Limits ---------------------------------------------------------------------------------

def io_timeout() -> float:
    """Seconds a remote read may wait for a byte (GAN_DIST_IO_TIMEOUT)."""
    return env.seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS)


def io_retries() -> int:
    """Further attempts after a failed remote read (GAN_DIST_IO_RETRIES)."""
    return env.retries(RETRIES_ENV, DEFAULT_RETRIES)


class RetryableError(OSError):
    """A failure that another attempt may not meet (timeout, refused, reset, 5xx)."""


def final_error(exc: RetryableError, message: str) -> OSError:
    """The error to raise when retries are spent: of the kind of the first cause
    (TimeoutError, ConnectionRefusedError, ...), so callers can tell them apart."""
    for kind in (TimeoutError, ConnectionRefusedError, ConnectionError):
        if isinstance(exc.__cause__, kind):
            return kind(message)
    return OSError(message)


# Reading --------------------------------------------------------------------------------

def open_stream(url: str) -> BinaryIO:
    """A binary file object for reading `url` front to back."""
    kind = scheme(url)
    if kind in ("", "file"):
        return open(local_path(url), "rb")
    if kind in ("http", "https"):
        return HttpStream(url)
    fs, path = _pyarrow_fs(url)
    return _pyarrow_call(url, lambda: fs.open_input_stream(path, buffer_size=REMOTE_BLOCK))


def read_bytes(url: str) -> bytes:
    with open_stream(url) as f:
        return f.read()


def read_head(url: str, size: int) -> tuple[bytes, int]:
    """(the first `size` bytes of `url`, its whole size in bytes): one ranged read
    (over HTTP one GET, its size from Content-Range: no HEAD, which some servers
    and presigned URLs refuse). FileNotFoundError if it is not there."""
    kind = scheme(url)
    if kind in ("", "file"):
        with open(local_path(url), "rb") as f:
            return f.read(size), os.fstat(f.fileno()).st_size
    if kind in ("http", "https"):
        with HttpStream(url, end=size) as f:
            return f.read(size), f.total_size
    fs, path = _pyarrow_fs(url)

    def ranged_read() -> tuple[bytes, int]:  # a random-access file reads a byte range, not a buffer's worth
        with fs.open_input_file(path) as f:
            return f.read(size), f.size()

    return _pyarrow_call(url, ranged_read)


# HTTP -----------------------------------------------------------------------------------

def _http_request(url: str, method: str = "GET", start: int = 0, end: int | None = None):
    """An open HTTP response, or RetryableError / FileNotFoundError / PermissionError / OSError."""
    headers = {"User-Agent": "gan-dist"}
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        return urllib.request.urlopen(request, timeout=io_timeout())
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise FileNotFoundError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        if exc.code in (401, 403):
            raise PermissionError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        if exc.code in RETRY_STATUSES:
            raise RetryableError(f"HTTP {exc.code} {exc.reason}") from None
        raise OSError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _named(_network_error(exc.reason), url) from (exc.reason if isinstance(exc.reason, OSError) else None)
    except (OSError, http.client.HTTPException) as exc:  # a timeout or reset before the status line
        raise _named(_network_error(exc), url) from exc


def _named(error: OSError, url: str) -> OSError:
    """A final error names its URL; a retryable one gets it when the retries are spent."""
    return error if isinstance(error, RetryableError) else OSError(f"{url}: {error}")


def _network_error(reason) -> OSError:
    """What went wrong, in words, as a RetryableError (or OSError for what retrying cannot fix)."""
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return RetryableError(f"no answer within {io_timeout():g} s ({TIMEOUT_ENV})")
    if isinstance(reason, ConnectionRefusedError):
        return RetryableError("connection refused (is the server running, and on that port?)")
    if isinstance(reason, socket.gaierror):
        return OSError(f"cannot resolve the host name ({reason.strerror})")
    if isinstance(reason, (ConnectionError, http.client.HTTPException)):
        return RetryableError(f"connection broken ({type(reason).__name__}: {reason})")
    if isinstance(reason, OSError):
        return RetryableError(f"{type(reason).__name__}: {reason.strerror or reason}")
    return OSError(str(reason))


class HttpStream(io.RawIOBase):
    """A streamed GET of `url` (bytes [0, end) if `end`), read front to back.

    Each read waits at most io_timeout() for data. A read that fails (timeout,
    reset, cut short) reopens the response at the current position with a
    Range request (a server that ignores Range sends the whole file: the bytes
    already read are skipped). A stream has one budget of io_retries() retries,
    however they are spent."""

    def __init__(self, url: str, end: int | None = None):
        super().__init__()
        self.url, self.end, self.position = url, end, 0
        self.total_size: int | None = None  # of the whole file, when the server says
        self._retries_left, self._attempts = io_retries(), 0
        self._response = None
        self._response = self._retry(self._open_at_position)

    def readable(self) -> bool:
        return True

    def _open_at_position(self):
        response = _http_request(self.url, start=self.position, end=self.end)
        self.total_size = _total_size(response, self.url)
        if self.position and response.status != 206:  # Range ignored: skip what we have
            _skip(response, self.position)
        return response

    def _retry(self, attempt: Callable[[], T]) -> T:
        while True:
            self._attempts += 1
            try:
                return attempt()
            except RetryableError as exc:
                self._give_up_or_wait(exc)

    def _give_up_or_wait(self, exc: RetryableError) -> None:
        if self._retries_left == 0:
            raise final_error(exc, f"{self.url}: {exc} (at byte {self.position:,}, "
                                   f"{self._attempts} attempt(s))") from None
        time.sleep(FIRST_BACKOFF_SECONDS * 2 ** (io_retries() - self._retries_left))
        self._retries_left -= 1

    def readinto(self, buffer) -> int:
        if self.end is not None and self.position >= self.end:
            return 0
        while True:
            try:
                count = self._response.readinto(buffer)
                if count == 0 and len(buffer) and self._response.length:  # http.client returns 0 when a response is cut short
                    raise http.client.IncompleteRead(b"", self._response.length)
                self.position += count
                return count
            except (OSError, http.client.HTTPException) as exc:
                error = _network_error(exc)
                if not isinstance(error, RetryableError):
                    raise OSError(f"{self.url}: {error} (at byte {self.position:,})") from None
                error.__cause__ = exc
                self._response.close()
                self._give_up_or_wait(error)
                self._response = self._retry(self._open_at_position)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return super().read(size)

    def readall(self) -> bytes:
        out = bytearray()
        while data := self.read(1 << 20):
            out += data
        return bytes(out)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        super().close()


def _total_size(response, url: str) -> int | None:
    """The file's size: from Content-Range (`bytes 0-511/12345`) for a range, else Content-Length."""
    if response.status == 206:
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _skip(response, count: int) -> None:
    while count:
        data = response.read(min(count, REMOTE_BLOCK))
        if not data:
            raise RetryableError("the response ended early")
        count -= len(data)


# pyarrow.fs (S3 and others) -------------------------------------------------------------

def _pyarrow_call(url: str, call: Callable[[], T]) -> T:
    """An Arrow filesystem call whose errors name the URL (Arrow retries S3 itself)."""
    try:
        return call()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: not found ({exc})") from None
    except OSError as exc:
        raise OSError(f"{url}: {exc}") from None


def _pyarrow_fs(url: str):
    """(filesystem, path): one filesystem per folder, so an S3 client is made
    once per dataset and process, not once per shard."""
    folder, name = split(url)
    fs, folder_path = _pyarrow_folder(folder, io_timeout(), io_retries())
    return fs, f"{folder_path.rstrip('/')}/{name}"


@functools.lru_cache(maxsize=64)
def _pyarrow_folder(folder: str, timeout: float, retries: int):
    import pyarrow.fs as pafs  # deferred: Arrow's filesystems load only for remote data

    try:
        fs, path = pafs.FileSystem.from_uri(folder)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
        raise OSError(f"cannot open {folder}: {exc}") from None
    if isinstance(fs, pafs.S3FileSystem):
        # from_uri resolved the region and endpoint; add our limits to those options
        _, (options,) = fs.__reduce__()
        options.update(connect_timeout=timeout, request_timeout=timeout,
                       retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retries + 1))
        fs = pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})
    return fs, path
