"""Datasets: odd image files load as RGB uint8, layouts, pairing, augmentation, corrupt files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    EmptyFolderError,
    ImageLoadError,
    PairedImageFolder,
    UnpairedImageFolder,
    holdout_split,
    list_images,
    load_rgb_array,
    open_image,
)


@pytest.fixture
def photo(fixtures_dir: Path) -> Image.Image:
    path = sorted((fixtures_dir / "yosemite" / "trainA").iterdir())[0]
    return Image.open(path).convert("RGB").resize((48, 32))  # W x H, not square on purpose


def test_odd_files_load_as_rgb_uint8(tmp_path: Path, photo: Image.Image) -> None:
    rgb = np.asarray(photo).astype(int)
    photo.convert("L").save(tmp_path / "grey.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "alpha.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "palette.png")
    grey16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep16.png")
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(tmp_path / "2010-01-01 12:00:00 rotated.jpg", exif=exif, quality=95)

    for path in sorted(tmp_path.iterdir()):
        img = open_image(path)
        assert img.mode == "RGB", path.name
        arr = np.asarray(img)
        assert arr.dtype == np.uint8

    assert Image.open(tmp_path / "deep16.png").mode.startswith("I")  # really a 16-bit file
    deep = load_rgb_array(tmp_path / "deep16.png")
    np.testing.assert_array_equal(deep[..., 0], np.asarray(photo.convert("L")))  # top 8 bits kept
    grey = load_rgb_array(tmp_path / "grey.png")
    assert (grey[..., 0] == grey[..., 2]).all()
    # alpha is composited over white: half-transparent pixels move half-way to 255
    alpha = load_rgb_array(tmp_path / "alpha.png").astype(int)
    assert np.abs(alpha - (rgb * 128 + 255 * 127) / 255).max() <= 2
    assert np.abs(load_rgb_array(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 12
    # EXIF orientation applied: 48x32 stored, 32x48 shown, and the pixels are the rotated ones
    rotated = load_rgb_array(tmp_path / "2010-01-01 12:00:00 rotated.jpg").astype(int)
    assert rotated.shape == (48, 32, 3)
    assert np.abs(rotated - np.rot90(rgb, k=-1)).mean() < 8


def test_unpaired_folder_with_spaces_and_colons(fixtures_dir: Path) -> None:
    ds = UnpairedImageFolder(fixtures_dir / "yosemite", crop_size=32)
    assert len(ds) == 3 and any(" " in p.name and ":" in p.name for p in ds.files_a)
    item = ds.load_item(1, seed=7)
    assert item["A"].shape == item["B"].shape == (3, 32, 32)
    assert item["A"].dtype == torch.float32
    assert -1.0 <= item["A"].min() < 0 < item["A"].max() <= 1.0
    assert Path(item["A_path"]).parent.name == "trainA" and Path(item["B_path"]).parent.name == "trainB"
    again = ds.load_item(1, seed=7)
    assert torch.equal(item["A"], again["A"]) and item["B_path"] == again["B_path"]
    # other seeds give other crops/flips and other partners
    variants = {(ds.load_item(1, s)["B_path"], ds.load_item(1, s)["A"].sum().item()) for s in range(8)}
    assert len(variants) > 1
    test = UnpairedImageFolder(fixtures_dir / "yosemite", phase="test", crop_size=32)
    assert len(test) == 2 and not test.train
    assert torch.equal(test[0]["A"], test[0]["A"])  # evaluation is deterministic


def test_two_folders_with_a_holdout_split(fixtures_dir: Path) -> None:
    root = fixtures_dir / "monet"
    train = UnpairedImageFolder(root, a_dir="photo_jpg", b_dir="monet_jpg", holdout_every=3, crop_size=32)
    test = UnpairedImageFolder(
        root, "test", a_dir="photo_jpg", b_dir="monet_jpg", holdout_every=3, crop_size=32
    )
    assert set(train.files_a).isdisjoint(test.files_a) and set(train.files_b).isdisjoint(test.files_b)
    assert len(train.files_a) + len(test.files_a) == 3
    files = [Path(f"{i:03d}.jpg") for i in range(25)]
    tr, te = holdout_split(reversed(files), every=10)
    assert [p.name for p in te] == ["000.jpg", "010.jpg", "020.jpg"] and len(tr) == 22
    assert holdout_split(files, every=0) == (files, [])


def test_paired_side_by_side_and_direction(fixtures_dir: Path) -> None:
    root = fixtures_dir / "facades"
    a2b = PairedImageFolder(root, direction="AtoB", crop_size=32)
    b2a = PairedImageFolder(root, direction="BtoA", crop_size=32)
    x, y = a2b.load_item(0, seed=3), b2a.load_item(0, seed=3)
    assert x["A"].shape == x["B"].shape == (3, 32, 32)
    assert torch.equal(x["A"], y["B"]) and torch.equal(x["B"], y["A"])
    assert not torch.equal(x["A"], x["B"])
    raw_a, raw_b = a2b.load_pair(0)
    whole = load_rgb_array(a2b.pairs[0][0])
    np.testing.assert_array_equal(np.concatenate([raw_a, raw_b], axis=1), whole)


def test_paired_halves_get_the_same_crop_and_flip(tmp_path: Path, photo: Image.Image) -> None:
    (tmp_path / "train").mkdir()
    half = np.asarray(photo.resize((40, 40)))
    Image.fromarray(np.concatenate([half, half], axis=1)).save(tmp_path / "train" / "same.png")
    ds = PairedImageFolder(tmp_path, load_size=40, crop_size=24)
    for seed in range(6):  # random crops and flips, always identical on both sides
        item = ds.load_item(0, seed)
        assert torch.equal(item["A"], item["B"])


def test_paired_separate_folders(tmp_path: Path, photo: Image.Image) -> None:
    for side in "AB":
        (tmp_path / side / "train").mkdir(parents=True)
    photo.save(tmp_path / "A" / "train" / "x 1.png")
    photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "B" / "train" / "x 1.png")
    photo.save(tmp_path / "A" / "train" / "lonely.png")
    with pytest.warns(UserWarning, match="without a partner"):
        ds = PairedImageFolder(tmp_path, crop_size=32, train=False)
    assert len(ds) == 1
    item = ds[0]
    assert torch.allclose(item["A"].flip(1), item["B"], atol=0.05)


def test_missing_and_empty_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(EmptyFolderError, match="trainA/ and trainB/"):
        UnpairedImageFolder(tmp_path, crop_size=32)
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainB").mkdir()
    (tmp_path / "trainA" / "notes.txt").write_text("not an image")
    with pytest.raises(EmptyFolderError, match="no readable images"):
        UnpairedImageFolder(tmp_path, crop_size=32)
    with pytest.raises(EmptyFolderError, match="train/ with side-by-side"):
        PairedImageFolder(tmp_path, crop_size=32)


def test_corrupt_files_are_skipped_with_a_warning(tmp_path: Path, fixtures_dir: Path) -> None:
    good = sorted((fixtures_dir / "yosemite" / "trainA").iterdir())[0]
    shutil.copy(good, tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipping 2 unreadable.*broken\.jpg"):
        files = list_images(tmp_path)
    assert [p.name for p in files] == ["good.jpg"]
    # a file that cannot be decoded when it is loaded names itself
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        open_image(tmp_path / "broken.jpg")
    (tmp_path / "good.jpg").unlink()
    with pytest.warns(UserWarning), pytest.raises(EmptyFolderError):
        list_images(tmp_path)
