"""Streaming shards over HTTP and from an S3-API server, both on loopback."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from data_helpers import image_dataset
from gan_dist.data.errors import DataError
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
    same_batches(index, local)
    # ...or in the environment, as for any S3 client (AWS_ENDPOINT_URL)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_server}")
    upload(dataset, s3_server, "gan-data-env")
    same_batches(resolve_source("s3://gan-data-env/ds"), local, num_workers=2)  # loader processes read S3 too
    with pytest.raises(DataError, match="no index.parquet there"):
        resolve_source("s3://gan-data-env/elsewhere")
