"""IDX files (MNIST's format) and builtin:fashion-mnist, packed from the real Debian files."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from data_helpers import tar_members
from gan_dist.cli import main
from gan_dist.data import builtin, idx
from gan_dist.data.index import INDEX_FILE, DatasetIndex
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = pytest.mark.unit


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: 00 00 TYPE DIMS, big-endian uint32 dims, the values (written here, from the format)."""
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def split(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 7-image split of 5x6 grey images: gzip images, plain labels (both forms occur)."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    labels = np.array([0, 3, 1, 3, 2, 0, 1], dtype=np.uint8)
    folder = tmp_path / "idx"
    write(folder / "train-images-idx3-ubyte.gz", idx_bytes(images))
    write(folder / "train-labels-idx1-ubyte", idx_bytes(labels))
    return folder, images, labels


def decoded_records(root: Path) -> dict[str, tuple[np.ndarray, int]]:
    out = {}
    for shard in sorted(root.glob("shard-*.tar")):
        members = tar_members(shard)
        for name, data in members.items():
            if name.endswith(".png"):
                key = name[:-4]
                out[key] = (np.asarray(Image.open(io.BytesIO(data))), int(members[f"{key}.cls"]))
    return out


def test_idx_round_trip_from_the_file_or_its_folder(split, tmp_path, capsys):
    folder, images, labels = split
    out = tmp_path / "ds"
    assert main(["data", "pack", str(folder / "train-images-idx3-ubyte.gz"), "--out", str(out),
                 "--shard-samples", "3"]) == 0
    index = DatasetIndex.read(str(out), str(out / INDEX_FILE))
    assert index.meta["sample_shape"] == [1, 5, 6] and index.meta["num_classes"] == 4
    assert index.meta["name"] == "train" and index.meta["preprocess"] == "none"
    assert [s.num_samples for s in index.shards] == [3, 3, 1]
    records = decoded_records(out)
    assert sorted(records) == [f"{i:08d}" for i in range(7)]  # key = position in the IDX file
    for i in range(7):
        pixels, label = records[f"{i:08d}"]
        np.testing.assert_array_equal(pixels, images[i])  # lossless, not transposed
        assert label == labels[i]
    # the folder holding the pair packs the same bytes
    again = tmp_path / "again"
    assert main(["data", "pack", str(folder), "--out", str(again), "--shard-samples", "3"]) == 0
    assert [s.sha256 for s in DatasetIndex.read(str(again), str(again / INDEX_FILE)).shards] == \
        [s.sha256 for s in index.shards]
    # and it streams as [N, 1, 5, 6] floats with the labels
    batch = RankStream(resolve_source(str(out)), 0, 1, 7, seed=0, window=4).next_batch()
    assert batch["x"].shape == (7, 1, 5, 6) and sorted(batch["y"]) == sorted(labels)


def test_idx_without_labels_packs_unlabelled(split, tmp_path):
    folder, images, _ = split
    (folder / "train-labels-idx1-ubyte").unlink()
    out = tmp_path / "ds"
    assert main(["data", "pack", str(folder / "train-images-idx3-ubyte.gz"), "--out", str(out)]) == 0
    index = DatasetIndex.read(str(out), str(out / INDEX_FILE))
    assert index.meta["num_classes"] == 0 and index.meta["fields"] == {"x": "png"} and index.num_samples == 7


def _damage(case: str, folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Make `folder`'s split bad in one way; return the SRC to pack."""
    src = folder / "train-images-idx3-ubyte.gz"
    if case == "float-images":
        write(src, idx_bytes(images.astype(">f4"), 0x0D))
    elif case == "labels-as-images":  # a one-dimensional file where images belong
        write(src, idx_bytes(labels))
    elif case == "label-count":
        write(folder / "train-labels-idx1-ubyte", idx_bytes(labels[:5]))
    elif case == "truncated":
        write(src, idx_bytes(images)[:-10])
    elif case == "truncated-gzip":
        src.write_bytes(gzip.compress(idx_bytes(images))[:-30])
    elif case == "not-idx":
        write(src, b"<html>not an IDX file</html>")
    elif case == "two-splits":
        write(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(images))
        src = folder
    return src


@pytest.mark.parametrize("case,message", [
    ("float-images", "IDX values are 32-bit floats; an images file must hold unsigned bytes"),
    ("labels-as-images", "an IDX file of 1 dimension(s); an images file has 3"),
    ("label-count", "5 labels for the 7 images of train-images-idx3-ubyte.gz"),
    ("truncated", "truncated: 200 bytes of values, its header announces 7 x 5 x 6 = 210"),
    ("truncated-gzip", "unreadable (EOFError"),
    ("not-idx", "not an IDX file"),
    ("two-splits", "holds 2 IDX images files"),
])
def test_bad_idx_input_is_one_line_exit_2_nothing_written(case, message, split, tmp_path, capsys):
    folder, images, labels = split
    src = _damage(case, folder, images, labels)
    out = tmp_path / "new" / "ds"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["data", "pack", str(src), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gan-dist: error:"), err
    assert message in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_pad_keeps_every_pixel_on_a_black_border():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8) | 1  # no zeros
    padded = idx.pad_to(images, 32)
    assert padded.shape == (2, 32, 32)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not padded[:, border].any()


FASHION = Path(builtin.FASHION_MNIST_DIR)


@pytest.mark.parametrize("name,count,shards", [("fashion-mnist", 60000, 24), ("fashion-mnist-test", 10000, 4)])
def test_builtin_fashion_mnist_from_the_debian_files(name, count, shards, cache_dir):
    index = resolve_source(f"builtin:{name}", cache_dir=str(cache_dir))
    meta = index.meta
    assert index.num_samples == count and len(index.shards) == shards
    assert meta["sample_shape"] == [1, 32, 32] and meta["num_classes"] == 10
    assert meta["classes"][0] == "T-shirt/top" and meta["classes"][9] == "Ankle boot"
    assert meta["preprocess"] == "pad28to32"
    # Fashion-MNIST is balanced: 6,000 (1,000 test) images per class
    assert np.sum([s.class_counts for s in index.shards], axis=0).tolist() == [count // 10] * 10
    # a record is the original image, padded with black, and its label
    split = builtin.FASHION_MNIST_SPLITS[name]
    originals = idx.read_images(FASHION / f"{split}-images-idx3-ubyte.gz")
    labels = idx.read_labels(FASHION / f"{split}-labels-idx1-ubyte.gz", count, FASHION)
    members = tar_members(Path(index.root) / index.shards[1].shard)
    keys = sorted(n[:-4] for n in members if n.endswith(".png"))
    assert len(keys) == 2500
    for key in keys[:50]:
        pixels = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
        assert pixels.shape == (32, 32) and not pixels[:2].any() and not pixels[:, -2:].any()
        np.testing.assert_array_equal(pixels[2:30, 2:30], originals[int(key)])
        assert int(members[f"{key}.cls"]) == labels[int(key)]
    # the pack is reproducible: the same bytes on every node (seeded shuffle, fixed tar headers)
    digest = hashlib.sha256((Path(index.root) / index.shards[0].shard).read_bytes()).hexdigest()
    assert digest == index.shards[0].sha256


def test_builtin_fashion_mnist_without_the_package_says_how_to_get_it(tmp_path):
    cache = tmp_path / "cache"  # a cache of its own: the session's may hold the set already
    res = run_cli("data", "inspect", "builtin:fashion-mnist-test", cache=cache,
                  env={"GAN_DIST_FASHION_MNIST_DIR": str(tmp_path / "nothing")})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "apt-get install dataset-fashion-mnist" in res.stderr and "gan-dist data pack" in res.stderr
    assert not cache.exists()  # nothing written
