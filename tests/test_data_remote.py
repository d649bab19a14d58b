"""Streaming shards over HTTP and from an S3-API server, both on loopback."""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data_helpers import image_dataset, random_images
from gan_dist.cli import main
from gan_dist.data import fs
from gan_dist.data.errors import DataError
from gan_dist.data.inspect import check_dataset
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote") / "ds"
    image_dataset(root, 30, per_shard=7)
    return root


def same_batches(index, local, n=6, **kwargs) -> None:
    """The remote stream yields exactly what the local one does."""
    def batches(ix):
        stream = RankStream(ix, 1, 2, 5, seed=0, window=3, **kwargs)
        out = [stream.next_batch() for _ in range(n)]
        stream.close()
        return out

    for a, b in zip(batches(index), batches(local)):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])


@pytest.fixture
def http_url(dataset):
    """A static file server for the dataset's parent folder on 127.0.0.1 (a free port)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(dataset.parent)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_stream_over_http(http_url, dataset):
    local = resolve_source(str(dataset))
    index = resolve_source(f"{http_url}/ds")
    assert index.num_samples == 30 and index.url(0) == f"{http_url}/ds/shard-000000.tar"
    check_dataset(index)  # a HEAD and a 512-byte ranged GET per shard
    same_batches(index, local)
    same_batches(index, local, verify=False)  # streamed GETs instead of whole-shard reads
    # a brace pattern picks shards by name, from the index (HTTP has no listing)
    subset = resolve_source(f"{http_url}/ds/shard-{{000001..000002}}.tar")
    assert [s.shard for s in subset.shards] == ["shard-000001.tar", "shard-000002.tar"]
    assert subset.num_samples == 14
    with pytest.raises(DataError, match="no index.parquet there"):
        resolve_source(f"{http_url}/nothing-here")


def test_missing_shard_over_http_is_skipped_and_counted(http_url, dataset, tmp_path):
    index = resolve_source(f"{http_url}/ds")
    index.shards[2].shard = "shard-999999.tar"  # as if it were deleted from the server
    stream = RankStream(index, 0, 1, 30, seed=0, window=4, max_corrupt_fraction=0.5)
    assert len(stream.next_batch()["y"]) == 30 and stream.corrupt_samples == 7


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 API server on 127.0.0.1 (a free port), with test credentials."""
    from moto import server as moto_server  # the `test` extra installs it
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


def upload(dataset: Path, endpoint: str, bucket: str) -> None:
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(endpoint_override=f"http://{endpoint}", region="us-east-1", allow_bucket_creation=True)
    s3.create_dir(bucket)
    for path in sorted(dataset.iterdir()):
        with s3.open_output_stream(f"{bucket}/ds/{path.name}") as out:
            out.write(path.read_bytes())


def test_stream_from_s3_with_endpoint_override(s3_server, dataset, monkeypatch):
    upload(dataset, s3_server, "gan-data")
    local = resolve_source(str(dataset))
    # the endpoint in the URL...
    index = resolve_source(f"s3://gan-data/ds?endpoint_override={s3_server}&scheme=http")
    assert index.url(1) == f"s3://gan-data/ds/shard-000001.tar?endpoint_override={s3_server}&scheme=http"
    check_dataset(index)
    same_batches(index, local)
    # ...or in the environment, as for any S3 client (AWS_ENDPOINT_URL)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_server}")
    upload(dataset, s3_server, "gan-data-env")
    same_batches(resolve_source("s3://gan-data-env/ds"), local, num_workers=2)  # loader processes read S3 too
    with pytest.raises(DataError, match="no index.parquet there"):
        resolve_source("s3://gan-data-env/elsewhere")


# One bad sample costs one sample, and no read waits forever ---------------------------------

def flip_inside_a_png(shard: Path, which: int = 3) -> str:
    """Flip bytes in the middle of the payload of the `which`-th PNG member; its key."""
    data = bytearray(shard.read_bytes())
    headers = [o for o in range(0, len(data), 512) if data[o + 257:o + 262] == b"ustar"
               and data[o:o + 100].split(b"\0")[0].endswith(b".png")]
    name = data[headers[which]:headers[which] + 100].split(b"\0")[0].decode()
    size = int(data[headers[which] + 124:headers[which] + 136].rstrip(b"\0 "), 8)
    middle = headers[which] + 512 + size // 2
    data[middle:middle + 4] = bytes(b ^ 0xA5 for b in data[middle:middle + 4])
    shard.write_bytes(bytes(data))
    return name[:-len(".png")]


@pytest.fixture
def one_corrupt_png(tmp_path, http_url, dataset) -> Path:
    """A one-shard dataset packed from an image folder, one PNG's payload damaged
    (the index's sha256 no longer matches the shard), served beside `dataset`."""
    from PIL import Image

    pixels, labels = random_images(40, size=8, seed=7)
    folder = tmp_path / "images"
    for i, (p, y) in enumerate(zip(pixels, labels)):
        (folder / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(folder / f"c{y}" / f"{i:03d}.png")
    out = dataset.parent / "one-bad-png"
    shutil.rmtree(out, ignore_errors=True)
    assert main(["data", "pack", str(folder), "--out", str(out), "--shard-samples", "1000"]) == 0
    flip_inside_a_png(out / "shard-000000.tar")
    yield out
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("where", ["local", "http"])
def test_one_corrupt_png_costs_one_sample(where, one_corrupt_png, http_url, caplog):
    source = str(one_corrupt_png) if where == "local" else f"{http_url}/{one_corrupt_png.name}"
    index = resolve_source(source)
    assert len(index.shards) == 1 and index.num_samples == 40
    stream = RankStream(index, 0, 1, 13, seed=0, window=8)
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        ys = np.concatenate([stream.next_batch()["y"] for _ in range(3)])  # 39 samples: one epoch, less the bad one
    stream.close()
    assert stream.corrupt_samples == 1 and stream.samples_seen == 39 and len(ys) == 39
    assert "shard-000000.tar is damaged (checksum mismatch" in caplog.text


def test_a_stalled_shard_ends_in_an_error_not_a_hang(tmp_path, monkeypatch):
    """A server that serves the index and then never answers for the shard: the
    stream's reads time out (GAN_DIST_IO_TIMEOUT), and with nothing readable the
    stream stops with a DataError naming the URL."""
    image_dataset(tmp_path / "ds", 6, per_shard=6)
    release = threading.Event()

    class StallShards(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):
            if self.path.endswith(".tar"):
                release.wait(30)
                return None
            return super().send_head()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StallShards, directory=str(tmp_path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    monkeypatch.setenv("GAN_DIST_IO_TIMEOUT", "0.5")
    monkeypatch.setenv("GAN_DIST_IO_RETRIES", "1")
    url = f"http://127.0.0.1:{server.server_address[1]}/ds"
    try:
        for verify in (True, False):  # a whole-shard read, and a streamed one
            stream = RankStream(resolve_source(url), 0, 1, 2, seed=0, window=4, verify=verify, max_corrupt_fraction=1.0)
            started = time.monotonic()
            with pytest.raises(DataError, match=r"without one readable sample .*shard-000000.tar.*no answer within 0.5 s"):
                stream.next_batch()
            assert time.monotonic() - started < 20
            stream.close()
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_http_stream_resumes_where_a_cut_connection_stopped(tmp_path, monkeypatch):
    """A server that drops the connection half-way through a shard: the stream
    reconnects with a Range request and reads on; the bytes are the file's."""
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(payload)
    cuts = []

    class CutOnce(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            if not cuts:
                cuts.append(start)
                self.wfile.write(payload[start:start + 100_000])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # cut short
                return
            self.wfile.write(payload[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CutOnce, directory=str(tmp_path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    monkeypatch.setenv("GAN_DIST_IO_RETRIES", "1")
    try:
        assert fs.read_bytes(f"http://127.0.0.1:{server.server_address[1]}/blob") == payload
        assert cuts == [0]
    finally:
        server.shutdown()
        server.server_close()
