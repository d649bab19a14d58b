"""Random crops of photographs (`data pack --crop`), the pixel limit, and the builtin photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import tar_members
from gan_dist.data import photos
from gan_dist.data.errors import DataError
from gan_dist.data.pack import PackOptions, pack
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream

pytestmark = pytest.mark.unit


def photo_folder(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """PNG "photos" of the given (width, height), named p0.png, p1.png, ...: their pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
        out.append(pixels)
    return out


def crops_of(out: Path) -> dict[str, np.ndarray]:
    crops = {}
    for shard in sorted(out.glob("shard-*.tar")):
        for name, data in tar_members(shard).items():
            if name.endswith(".png"):
                crops[name[:-4]] = np.asarray(Image.open(io.BytesIO(data)))
    return crops


def found_in(crop: np.ndarray, photo: np.ndarray) -> bool:
    """Whether `crop` is a window of `photo` (exhaustive search over positions)."""
    size = crop.shape[0]
    for top in range(photo.shape[0] - size + 1):
        for left in range(photo.shape[1] - size + 1):
            if np.array_equal(photo[top:top + size, left:left + size], crop):
                return True
    return False


def test_pack_crop_cuts_windows_of_each_photo_and_skips_small_ones(tmp_path):
    # p0, p1 large enough; p2 is smaller than the crop on one side and is skipped and counted
    pixels = photo_folder(tmp_path / "in", [(40, 30), (24, 50), (20, 12)])
    out = tmp_path / "ds"
    index = pack(str(tmp_path / "in"), out, PackOptions(crop=16, crops_per_image=5, shard_samples=4, seed=3))
    assert index.num_samples == 10 and index.meta["sample_shape"] == [3, 16, 16]
    assert index.meta["skipped_small_inputs"] == 1 and index.meta["preprocess"] == "random-crop16"
    crops = crops_of(out)
    assert len(crops) == 10
    for key, crop in crops.items():
        source = int(key.split("-")[0])  # key of the photo, then the crop's number
        assert crop.shape == (16, 16, 3) and found_in(crop, pixels[source])
    # crops of different photos are interleaved, not written photo by photo
    order = [name.split("-")[0] for shard in sorted(out.glob("shard-*.tar"))
             for name in tar_members(shard) if name.endswith(".png")]
    assert order != sorted(order)
    # positions differ within a photo (5 draws over 375 positions: equal boxes would be a bug)
    assert len({crop.tobytes() for crop in crops.values()}) == 10


def test_pack_crop_is_reproducible_and_the_seed_moves_the_crops(tmp_path):
    photo_folder(tmp_path / "in", [(64, 48), (50, 70)])
    digests = []
    for name, workers, seed in (("a", 1, 0), ("b", 2, 0), ("c", 1, 1)):
        pack(str(tmp_path / "in"), tmp_path / name, PackOptions(crop=8, crops_per_image=3, workers=workers, seed=seed))
        digests.append([s.sha256 for s in resolve_source(str(tmp_path / name)).shards])
    assert digests[0] == digests[1]  # workers do not change the bytes
    assert digests[0] != digests[2]


def test_packed_crops_stream_as_a_batch_of_hr_patches(tmp_path):
    photo_folder(tmp_path / "in", [(48, 48)] * 3)
    pack(str(tmp_path / "in"), tmp_path / "ds", PackOptions(crop=24, crops_per_image=4))
    stream = RankStream(resolve_source(str(tmp_path / "ds")), 0, 1, 6, seed=0, window=8)
    batch = stream.next_batch()
    stream.close()
    assert batch["x"].shape == (6, 3, 24, 24) and -1 <= batch["x"].min() and batch["x"].max() <= 1


def test_crop_larger_than_every_photo_is_refused_naming_the_largest(tmp_path):
    photo_folder(tmp_path / "in", [(30, 20), (25, 40)])
    with pytest.raises(DataError, match=r"--crop 96 is larger than every image \(the largest is 25x40\)"):
        pack(str(tmp_path / "in"), tmp_path / "ds", PackOptions(crop=96))
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("opts, says", [
    (PackOptions(crop=8, size=8), "--crop and --size exclude each other"),
    (PackOptions(crops_per_image=4), "--crops-per-image needs --crop SIZE"),
    (PackOptions(crop=8, crops_per_image=0), "--crops-per-image >= 1"),
    (PackOptions(max_pixels=0), "--max-pixels must be >= 1"),
])
def test_bad_crop_options(tmp_path, opts, says):
    photo_folder(tmp_path / "in", [(16, 16)])
    with pytest.raises(DataError, match=says):
        pack(str(tmp_path / "in"), tmp_path / "ds", opts)


def test_an_image_over_the_pixel_limit_ends_the_pack_before_decoding(tmp_path):
    photo_folder(tmp_path / "in", [(16, 16), (100, 100)])
    with pytest.raises(DataError, match=r"p1.png: 100x100 is 10,000 pixels, over the limit of 256"):
        pack(str(tmp_path / "in"), tmp_path / "ds", PackOptions(crop=8, max_pixels=16 * 16))
    assert not (tmp_path / "ds").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert pack(str(tmp_path / "in"), tmp_path / "ds", PackOptions(crop=8, max_pixels=100 * 100)).num_samples == 2
    # a header that claims 2**30 pixels: refused from the header, before a byte of pixels is read
    bomb = tmp_path / "bomb.png"
    Image.new("1", (1 << 15, 1 << 15)).save(bomb)  # 1 bit a pixel, compresses to ~100 kB
    with pytest.raises(photos.ImageTooLarge, match="1,073,741,824 pixels, over the limit"):
        photos.open_image(bomb, str(bomb))


def test_crop_boxes_stay_inside_the_image_and_follow_the_seed():
    boxes = photos.crop_boxes(100, 40, 32, 500, photos.crop_seed(0, "00000001"))
    assert all(0 <= l and r <= 100 and 0 <= t and b <= 40 and r - l == b - t == 32 for l, t, r, b in boxes)
    lefts = [l for l, _, _, _ in boxes]
    assert min(lefts) <= 3 and max(lefts) >= 65  # uniform over 0..68, both ends reached
    assert boxes == photos.crop_boxes(100, 40, 32, 500, photos.crop_seed(0, "00000001"))
    assert boxes != photos.crop_boxes(100, 40, 32, 500, photos.crop_seed(0, "00000002"))


def test_builtin_photos_split_train_and_held_out(monkeypatch, tmp_path):
    # the real package's photos when installed (tests/tools/ensure-tools.sh installs it)
    train, held_out = photos.photo_files("photos"), photos.photo_files("photos-eval")
    assert [p.name for p in held_out] == sorted(photos.PHOTOS_EVAL)
    assert train and not {p.name for p in train} & set(photos.PHOTOS_EVAL)
    # a folder without them names the package to install
    monkeypatch.setenv(photos.PHOTOS_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match="apt-get install mate-backgrounds"):
        photos.photo_files("photos")


def test_builtin_photos_pack_as_crops(monkeypatch, tmp_path, cache_dir):
    # a stand-in folder of small photos with the held-out names: the real ones take minutes to pack
    folder = tmp_path / "photos"
    photo_folder(folder, [(120, 100)] * 5)
    names = [*photos.PHOTOS_EVAL, "A.jpg", "B.jpg"][:5]
    for i, name in enumerate(names):
        Image.open(folder / f"p{i}.png").convert("RGB").save(folder / name, quality=95)
        (folder / f"p{i}.png").unlink()
    monkeypatch.setenv(photos.PHOTOS_DIR_ENV, str(folder))
    monkeypatch.setattr(photos, "PHOTO_CROPS", 3)
    index = pack("builtin:photos", tmp_path / "ds", PackOptions())
    assert index.num_samples == 2 * 3 and index.meta["sample_shape"] == [3, 96, 96]
    assert sorted(index.meta["photos"]) == ["A.jpg", "B.jpg"] and index.meta["photos_package"] == "mate-backgrounds"
