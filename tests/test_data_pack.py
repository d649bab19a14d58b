"""`gan-dist data pack` and `data inspect`: round trips, the index, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_helpers import image_dataset, random_images, replace_member, tar_members, truncate
from gan_dist.cli import main
from gan_dist.data.errors import DataError
from gan_dist.data.index import INDEX_FILE, DatasetIndex
from gan_dist.data.inspect import check_dataset
from gan_dist.data.pack import PackOptions, pack
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = pytest.mark.unit


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def records_of(root: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a packed dataset."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(root.glob("shard-*.tar")):
        for name, data in tar_members(shard).items():
            key, ext = name.split(".", 1)
            out.setdefault(key, {})[ext] = data
    return out


def check_index(root: Path) -> DatasetIndex:
    """The index agrees with the shards on disk: names, bytes, sha256, record and class counts."""
    index = DatasetIndex.read(str(root), str(root / INDEX_FILE))
    assert sorted(p.name for p in root.glob("shard-*.tar")) == [s.shard for s in index.shards]
    for info in index.shards:
        data = (root / info.shard).read_bytes()
        assert info.num_bytes == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        members = tar_members(root / info.shard)
        keys = {name.split(".", 1)[0] for name in members}
        assert info.num_records == info.num_samples == len(keys)
        labels = [int(members[f"{k}.cls"]) for k in keys if f"{k}.cls" in members]
        assert info.class_counts == (np.bincount(labels, minlength=index.meta["num_classes"]).tolist()
                                     if labels else [])
    assert index.meta["num_samples"] == index.num_samples
    return index


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, list[tuple[Path, int]]]:
    """Two class folders of PNG and JPEG files of one size, in sorted (= key) order."""
    pixels, _ = random_images(7, size=12)
    root = tmp_path / "folder"
    files = []
    for i in range(7):
        cls = ("cat", "dog")[i % 2]
        ext = "jpg" if i == 3 else "png"
        path = root / cls / f"im{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(pixels[i], "JPEG" if ext == "jpg" else "PNG"))
        files.append(path)
    files.sort()
    return root, [(f, 0 if f.parent.name == "cat" else 1) for f in files]


def test_pack_folder_round_trips_bytes_and_labels(image_folder, tmp_path, cli):
    root, files = image_folder
    out = tmp_path / "ds"
    res = cli("data", "pack", str(root), "--out", str(out), "--shard-samples", "3")
    assert res.returncode == 0, res.stderr
    index = check_index(out)
    assert [s.num_samples for s in index.shards] == [3, 3, 1]
    assert index.meta["classes"] == ["cat", "dog"] and index.meta["sample_shape"] == [3, 12, 12]
    assert index.meta["fields"] == {"x": "jpg;png", "y": "cls"}
    records = records_of(out)
    assert sorted(records) == [f"{i:08d}" for i in range(7)]
    for i, (path, label) in enumerate(files):
        record = records[f"{i:08d}"]
        ext = "jpg" if path.suffix == ".jpg" else "png"
        assert record[ext] == path.read_bytes()  # original bytes, untouched
        assert int(record["cls"]) == label
    # packing shuffles: the shards do not hold the keys in input order
    first_shard = sorted(n.split(".")[0] for n in tar_members(out / "shard-000000.tar"))
    assert first_shard != [f"{i:08d}" for i in range(3)]
    # and the stream decodes both formats into one float tensor of the right shape
    stream = RankStream(resolve_source(str(out)), 0, 1, 7, seed=0, window=4)
    batch = stream.next_batch()
    assert batch["x"].shape == (7, 3, 12, 12) and batch["x"].dtype == np.float32
    assert -1 <= batch["x"].min() and batch["x"].max() <= 1 and sorted(batch["y"]) == sorted(f[1] for f in files)


def test_pack_parquet_in_record_batches(tmp_path):
    pixels, labels = random_images(23, size=8, seed=1)
    names = np.array(["bird", "ant", "cow"])[labels]
    table = pa.table({"img": [png_bytes(p) for p in pixels], "kind": names.tolist(), "other": list(range(23))})
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(table.slice(0, 15), folder / "a.parquet", row_group_size=4)
    pq.write_table(table.slice(15), folder / "b.parquet", row_group_size=4)
    out = tmp_path / "ds"
    index = pack(str(folder), out, PackOptions(shard_samples=10), image_column="img", label_column="kind")
    check_index(out)
    assert index.meta["classes"] == ["ant", "bird", "cow"] and index.num_samples == 23
    records = records_of(out)
    for i in range(23):  # key = row number in the table
        assert records[f"{i:08d}"]["png"] == table["img"][i].as_py()
        assert index.meta["classes"][int(records[f"{i:08d}"]["cls"])] == names[i]


def test_pack_npz_reencodes_pixels_losslessly_and_resizes(tmp_path):
    pixels, labels = random_images(9, size=10, seed=2)
    np.savez(tmp_path / "d.npz", images=pixels.transpose(0, 3, 1, 2), labels=labels)  # NCHW is accepted
    out = tmp_path / "ds"
    index = pack(str(tmp_path / "d.npz"), out, PackOptions(shard_samples=4, encode="png"))
    check_index(out)
    records = records_of(out)
    for i in range(9):
        decoded = np.asarray(Image.open(io.BytesIO(records[f"{i:08d}"]["png"])))
        np.testing.assert_array_equal(decoded, pixels[i])
        assert int(records[f"{i:08d}"]["cls"]) == labels[i]
    assert index.meta["sample_shape"] == [3, 10, 10] and index.meta["num_classes"] == labels.max() + 1

    small = pack(str(tmp_path / "d.npz"), tmp_path / "small", PackOptions(size=6, encode="webp", quality=100))
    assert small.meta["sample_shape"] == [3, 6, 6] and small.meta["fields"]["x"] == "webp"

    # PPM (uncompressed, the fast path) decodes to the same tensors as PNG, in colour and in grey
    for name, array in (("rgb", pixels), ("grey", pixels[..., 0])):
        np.savez(tmp_path / f"{name}.npz", images=array, labels=labels)
        png, ppm = (pack(str(tmp_path / f"{name}.npz"), tmp_path / f"{name}-{enc}", PackOptions(encode=enc))
                    for enc in ("png", "ppm"))
        assert ppm.meta["fields"]["x"] == ("ppm" if name == "rgb" else "pgm")
        a, b = (RankStream(ix, 0, 1, 9, seed=0, window=4).next_batch() for ix in (png, ppm))
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])


def test_pack_limits_shard_bytes_and_is_reproducible_with_workers(tmp_path):
    pixels, labels = random_images(40, size=16, seed=3)
    np.savez(tmp_path / "d.npz", x=pixels, y=labels)
    one = pack(str(tmp_path / "d.npz"), tmp_path / "one", PackOptions(shard_bytes=30 * 1024))
    assert len(one.shards) > 3 and all(s.num_bytes <= 30 * 1024 for s in one.shards)
    two = pack(str(tmp_path / "d.npz"), tmp_path / "two", PackOptions(shard_bytes=30 * 1024, workers=2))
    assert [s.sha256 for s in two.shards] == [s.sha256 for s in one.shards]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (the subprocess tests show it is the same)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", ["missing", "no-images", "bad-parquet", "mixed-sizes", "out-exists"])
def test_pack_bad_input_exits_2_and_writes_nothing(case, tmp_path, capsys):
    src = tmp_path / "src"
    out = tmp_path / "new" / "ds"
    if case == "no-images":
        (src / "cls").mkdir(parents=True)
        (src / "cls" / "notes.txt").write_text("hi")
    elif case == "bad-parquet":
        src = tmp_path / "t.parquet"
        src.write_bytes(b"this is not parquet")
    elif case == "mixed-sizes":
        src.mkdir()
        (src / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
        (src / "b.png").write_bytes(png_bytes(np.zeros((9, 8), np.uint8)))
    elif case == "out-exists":
        src.mkdir()
        (src / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = run_main(capsys, "data", "pack", str(src), "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gan-dist: error:"), err
    expected = {"missing": "no such file", "no-images": "no images", "bad-parquet": "unreadable Parquet",
                "mixed-sizes": "differ in size", "out-exists": "already exists"}[case]
    assert expected in lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_pack_bad_input_exit_code_from_the_shell(tmp_path, cli):
    res = cli("data", "pack", str(tmp_path / "nope"), "--out", str(tmp_path / "ds"))
    assert res.returncode == 2 and res.stderr.strip() == f"gan-dist: error: {tmp_path / 'nope'}: no such file or folder"
    assert not (tmp_path / "ds").exists()


def test_inspect_counts_verifies_and_previews(tmp_path, cli, capsys):
    pixels, labels = random_images(12, size=8, seed=4)
    np.savez(tmp_path / "d.npz", images=pixels, labels=labels)
    out = tmp_path / "ds"
    pack(str(tmp_path / "d.npz"), out, PackOptions(shard_samples=5, encode="png"))
    res = cli("data", "inspect", str(out), "--json", "--verify", "--preview", str(tmp_path / "p.png"))
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["shards"] == 3 and facts["samples"] == 12 and facts["sample_shape"] == [3, 8, 8]
    assert sum(facts["classes"].values()) == 12 and facts["verify"]["shards_ok"] == 3
    grid = Image.open(tmp_path / "p.png")
    assert grid.size == (4 * 10 + 2, 3 * 10 + 2)  # 12 images in rows of 4, 8 px + 2 px padding

    replace_member(out, "shard-000001.tar", sorted(tar_members(out / "shard-000001.tar"))[0], b"x")
    (out / "shard-000002.tar").write_bytes(b"garbage")
    code, out_text, _ = run_main(capsys, "data", "inspect", str(out), "--verify")
    assert code == 1
    assert "2 of 3 shards intact" in out_text and "shard-000002.tar: checksum mismatch" in out_text
    assert "shard-000001.tar" not in out_text  # damage inside a record is not a shard problem


def test_builtin_image_sets(cache_dir, tmp_path):
    for name, shape, classes in (("digits", [1, 32, 32], 10), ("shapes", [3, 32, 32], 4)):
        index = resolve_source(f"builtin:{name}", cache_dir=str(cache_dir))
        assert index.meta["sample_shape"] == shape and index.meta["num_classes"] == classes
        assert all(n > 0 for n in np.sum([s.class_counts for s in index.shards], axis=0))
        batch = RankStream(index, 1, 2, 16, seed=0, window=8).next_batch()
        assert batch["x"].shape == (16, *shape) and batch["y"].max() < classes
    # every node packs the same bytes
    again = pack("builtin:digits", tmp_path / "digits", PackOptions(shard_samples=256, encode="png", seed=20140610))
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in index_of(cache_dir, "digits").shards]


def index_of(cache_dir: Path, name: str) -> DatasetIndex:
    return resolve_source(f"builtin:{name}", cache_dir=str(cache_dir))


def test_interrupted_pack_leaves_nothing_that_looks_complete(tmp_path, cache_dir):
    pixels, labels = random_images(6000, size=32, seed=5)
    np.savez(tmp_path / "d.npz", images=pixels, labels=labels)
    out = tmp_path / "ds"
    env = dict(os.environ, GAN_DIST_CACHE=str(cache_dir))
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist", "data", "pack", str(tmp_path / "d.npz"), "--out",
                             str(out), "--encode", "webp", "--shard-samples", "200"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # A shell's background jobs inherit SIGINT ignored (POSIX): undo that,
                            # so Ctrl-C reaches the pack however this test was started.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ds.tmp-*/shard-000001.tar")) and proc.poll() is None:
        assert time.monotonic() < deadline, "pack wrote no shard in 60 s"
        time.sleep(0.01)
    assert proc.poll() is None, "pack finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".ds.tmp-*"))  # Ctrl-C cleans up; a kill -9 would leave only this hidden folder


def test_packed_datasets_and_the_builtin_cache_get_the_umask_permissions(tmp_path):
    """Not 0700 (tempfile.mkdtemp's): pods running as another uid, or a shared NFS
    export, must be able to read a dataset packed by someone else."""
    pixels, labels = random_images(5, size=8)
    np.savez(tmp_path / "d.npz", images=pixels, labels=labels)
    old = os.umask(0o022)
    try:
        pack(str(tmp_path / "d.npz"), tmp_path / "deep" / "ds", PackOptions())
        cached = resolve_source("builtin:digits", cache_dir=str(tmp_path / "cache"))
    finally:
        os.umask(old)
    for folder in (tmp_path / "deep", tmp_path / "deep" / "ds", Path(cached.root), Path(cached.root).parent):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
        for f in folder.glob("*.*"):
            assert f.stat().st_mode & 0o777 == 0o644, f


def test_an_image_folder_with_a_stray_parquet_file_packs_its_images(image_folder, tmp_path, caplog):
    root, files = image_folder
    pq.write_table(pa.table({"notes": ["not images"]}), root / "stats.parquet")
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        index = pack(str(root), tmp_path / "ds", PackOptions())
    assert index.num_samples == len(files) and index.meta["classes"] == ["cat", "dog"]
    assert "packing the images" in caplog.text
    # asked for a column: the tables are read (and this one has no image column)
    with pytest.raises(DataError, match="no column 'image'"):
        pack(str(root), tmp_path / "ds2", PackOptions(), image_column="image")


def test_check_dataset_refuses_what_cannot_work_and_warns_of_damage(tmp_path, caplog):
    index = image_dataset(tmp_path / "ds", 12, per_shard=4)
    check_dataset(index)  # sound: silent
    truncate(tmp_path / "ds" / "shard-000001.tar", 0.8)  # damaged, but it can hold its records
    with caplog.at_level(logging.WARNING, logger="gan_dist.data"):
        check_dataset(index)
    assert "shard-000001.tar: damaged" in caplog.text
    (tmp_path / "ds" / "shard-000002.tar").write_bytes(b"\x01" * 4096)
    with pytest.raises(DataError, match=r"shard-000002.tar: not a tar \(its first header: header checksum mismatch"):
        check_dataset(index)
    (tmp_path / "ds" / "shard-000000.tar").unlink()
    with pytest.raises(DataError, match=r"shard-000000.tar: missing \(and 1 more shard\(s\) with problems\)"):
        check_dataset(index)
