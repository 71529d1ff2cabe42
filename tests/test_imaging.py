"""service.imaging without a server: decoding every mode, limits, EXIF, pad/crop, tiling, sampling, encoding."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.grid import tile
from service import imaging
from service.config import load_settings
from service.imaging import DecodedImage, ImageError, Limits
from service.zoo import Zoo
from tests.tiny_models import make_model, make_zoo

FIXTURE = Path(__file__).parent / "fixtures" / "sr" / "head.png"
LIMITS = Limits()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    root = make_zoo(tmp_path_factory.mktemp("zoo"))
    make_model(root, "translate", "grey", channels=1)
    make_model(root, "translate", "mult8", multiple_of=8)
    make_model(root, "translate", "free", multiple_of=1)  # resolution-free by its card
    make_model(root, "upscale", "x3", scale=3)
    return Zoo.load(root, threads=1)


def _photo(w: int = 48, h: int = 36) -> Image.Image:
    return Image.open(FIXTURE).convert("RGB").resize((w, h))


def _bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# -- decoding: modes -----------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly() -> None:
    im = _photo()
    img = imaging.decode_image(_bytes(im), LIMITS)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (36, 48, 3)
    np.testing.assert_array_equal(img.rgb, np.asarray(im))
    assert img.alpha is None and not img.was_grey and img.source_format == "png"


@pytest.mark.parametrize("mode", ["L", "1", "I;16", "I", "F"])
def test_grey_modes_become_rgb(mode: str) -> None:
    grey = np.asarray(_photo().convert("L"))
    if mode == "I;16":
        im, fmt, expect = Image.fromarray(grey.astype(np.uint16) * 257), "PNG", grey  # 16-bit PNG
    elif mode == "I":
        im, fmt, expect = Image.fromarray(grey.astype(np.int32) * 257, "I"), "TIFF", grey
    elif mode == "F":
        im, fmt, expect = Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF", grey
    elif mode == "1":
        im = Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
        fmt, expect = "PNG", np.asarray(im.convert("L"))
    else:
        im, fmt, expect = Image.fromarray(grey), "PNG", grey
    img = imaging.decode_image(_bytes(im, fmt), LIMITS)
    assert img.was_grey and img.alpha is None
    assert img.rgb.shape == (*grey.shape, 3)
    for c in range(3):
        assert np.abs(img.rgb[:, :, c].astype(int) - expect).max() <= 1


def test_alpha_modes_keep_alpha() -> None:
    rgba = _photo().convert("RGBA")
    alpha = np.tile(np.arange(48, dtype=np.uint8) * 5, (36, 1))
    rgba.putalpha(Image.fromarray(alpha))
    img = imaging.decode_image(_bytes(rgba), LIMITS)
    np.testing.assert_array_equal(img.alpha, alpha)
    np.testing.assert_array_equal(img.rgb, np.asarray(rgba)[:, :, :3])

    la = rgba.convert("LA")
    img = imaging.decode_image(_bytes(la), LIMITS)
    assert img.was_grey
    np.testing.assert_array_equal(img.alpha, alpha)


def test_palette_with_and_without_transparency() -> None:
    pal = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img = imaging.decode_image(_bytes(pal), LIMITS)
    assert img.alpha is None
    np.testing.assert_array_equal(img.rgb, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    img = imaging.decode_image(_bytes(pal, transparency=0), LIMITS)
    assert img.alpha is not None
    np.testing.assert_array_equal(img.alpha == 0, np.asarray(pal) == 0)


def test_cmyk_jpeg() -> None:
    im = _photo()
    img = imaging.decode_image(_bytes(im.convert("CMYK"), "JPEG", quality=95), LIMITS)
    assert img.rgb.shape == (36, 48, 3) and img.source_format == "jpeg"
    assert np.abs(img.rgb.astype(int) - np.asarray(im)).mean() < 12  # colours survive, not inverted


def test_exif_orientation_is_applied() -> None:
    # a 40x20 image whose left half is red, stored with "rotate 90 CW to display" (orientation 6)
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _bytes(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    img = imaging.decode_image(data, LIMITS)
    assert img.rgb.shape == (40, 20, 3)  # displayed upright: portrait
    top, bottom = img.rgb[:18].astype(int), img.rgb[22:].astype(int)
    assert top[..., 0].mean() > 200 and bottom[..., 0].mean() < 50  # the red half is now on top


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = imaging.decode_image(buf.getvalue(), LIMITS)
    assert img.extra["frames"] == 2
    assert tuple(img.rgb[8, 8]) == (255, 0, 0)


# -- decoding: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text\n" * 10, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),
    ],
)
def test_unreadable_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as e:
        imaging.decode_image(data, LIMITS)
    assert e.value.status_code == 400


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt: str) -> None:
    data = _bytes(_photo(64, 64), fmt)
    with pytest.raises(ImageError, match="truncated or corrupt|not an image"):
        imaging.decode_image(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _bytes(Image.new("1", (10_000, 10_000)))  # 100 MP in a few kB
    assert len(bomb) < 100_000
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="10000x10000 .*100.0 MP.*the limit is 40.0 MP") as e:
        imaging.decode_image(bomb, LIMITS)
    assert e.value.status_code == 413
    assert time.perf_counter() - t0 < 0.5  # refused from the header, not after inflating


def test_byte_side_and_aspect_limits() -> None:
    data = _bytes(_photo())
    with pytest.raises(ImageError, match="limit is 100 bytes") as e:
        imaging.decode_image(data, Limits(max_bytes=100))
    assert e.value.status_code == 413
    with pytest.raises(ImageError, match="at least 40 px"):
        imaging.decode_image(data, Limits(min_side=40))
    with pytest.raises(ImageError, match="aspect ratio of 2000:1"):
        imaging.decode_image(_bytes(Image.new("RGB", (2000, 1))), LIMITS)
    assert imaging.decode_image(_bytes(Image.new("RGB", (1, 1))), LIMITS).rgb.shape == (1, 1, 3)


def test_not_bytes_is_refused() -> None:
    with pytest.raises(ImageError, match="file"):
        imaging.decode_image("https://example.com/cat.png", LIMITS)  # type: ignore[arg-type]


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFIGURE_MAX_PIXELS", "1000")
    monkeypatch.setenv("TRANSFIGURE_MAX_SIDE", "0")
    monkeypatch.setenv("TRANSFIGURE_TILE", "64")
    lim = load_settings().limits
    assert lim.max_pixels == 1000 and lim.max_side is None and lim.tile == 64
    assert lim.max_bytes == Limits().max_bytes
    monkeypatch.setenv("TRANSFIGURE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="TRANSFIGURE_MAX_BYTES='lots'"):
        load_settings()


# -- resize / translate --------------------------------------------------------------------------


def test_images_keep_their_resolution_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFIGURE_MAX_SIDE", raising=False)
    assert Limits().max_side is None and load_settings().limits.max_side is None
    monkeypatch.setenv("TRANSFIGURE_MAX_SIDE", "1024")  # the opt-in downscale
    assert load_settings().limits.max_side == 1024


def test_fullres_max_side_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFIGURE_FULLRES_MAX_SIDE", raising=False)
    assert Limits().fullres_max_side == 1024 and load_settings().limits.fullres_max_side == 1024
    monkeypatch.setenv("TRANSFIGURE_FULLRES_MAX_SIDE", "512")
    assert load_settings().limits.fullres_max_side == 512
    monkeypatch.setenv("TRANSFIGURE_FULLRES_MAX_SIDE", "0")  # off
    assert load_settings().limits.fullres_max_side is None
    monkeypatch.setenv("TRANSFIGURE_FULLRES_MAX_SIDE", "big")
    with pytest.raises(ValueError, match="TRANSFIGURE_FULLRES_MAX_SIDE"):
        load_settings()


def test_network_size_bounds_only_full_resolution_networks(zoo: Zoo) -> None:
    full, free = zoo.get("tiny-translate").card, zoo.get("free").card
    assert full.input.multiple_of > 1 and free.input.multiple_of == 1
    assert imaging.network_size(full, (4000, 3000), 1024) == (1024, 768)
    assert imaging.network_size(full, (1500, 4000), 1024) == (384, 1024)
    assert imaging.network_size(full, (1024, 700), 1024) == (1024, 700)  # within the bound
    assert imaging.network_size(full, (4000, 3000), None) == (4000, 3000)  # off
    assert imaging.network_size(free, (4000, 3000), 1024) == (4000, 3000)  # never for multiple_of 1
    assert (
        imaging.fit_within((4000, 3000), 1024)
        == imaging.resize_to_max_side(DecodedImage(rgb=np.zeros((3000, 4000, 3), np.uint8)), 1024).size
    )  # one rule for both downscales


def test_peek_size_reads_the_header_and_applies_the_limits() -> None:
    big = _bytes(Image.new("1", (5000, 4000)))  # 20 MP declared, a few kB of file
    assert imaging.peek_size(big, LIMITS) == (5000, 4000)
    assert imaging.peek_size(big[:200], LIMITS) == (5000, 4000)  # no pixel data needed
    with pytest.raises(ImageError, match="limit is 1.0 MP") as e:
        imaging.peek_size(big, Limits(max_pixels=1_000_000))
    assert e.value.status_code == 413
    with pytest.raises(ImageError, match="not an image"):
        imaging.peek_size(b"hello", LIMITS)
    with pytest.raises(ImageError, match="aspect ratio"):
        imaging.peek_size(_bytes(Image.new("L", (4000, 10))), LIMITS)


def test_tensor_conversions_are_the_plain_formula(zoo: Zoo) -> None:
    """The per-channel conversions (bounded memory at 12 MP) give exactly the straightforward values."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for spec in (zoo.get("tiny-translate").card.input, zoo.get("tiny-upscale").card.input):
        lo, hi = spec.range
        want = (rgb.astype(np.float32) * ((hi - lo) / 255.0) + lo).transpose(2, 0, 1)[None]
        got = imaging.to_tensor(rgb, spec)
        assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, want)
        y = rng.uniform(lo - 0.3, hi + 0.3, (2, 3, 37, 53)).astype(np.float32)
        plain = (
            np.rint((np.clip(y, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8).transpose(0, 2, 3, 1)
        )
        assert np.array_equal(imaging.from_tensor(y, spec), plain)
        assert np.array_equal(imaging.from_tensor(y[:, :, :30, :41], spec), plain[:, :30, :41])


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, "png"),
        ("", "png"),
        ("*/*", "png"),
        ("image/*", "png"),
        ("image/jpeg", "jpeg"),
        ("IMAGE/JPEG; charset=x", "jpeg"),
        ("image/jpg", "jpeg"),
        ("image/webp", "webp"),
        ("image/avif", "png"),
        ("application/json", "png"),
        ("image/webp,*/*;q=0.8", "webp"),
        ("text/html,application/xhtml+xml,image/avif,image/webp,image/apng,*/*;q=0.8", "webp"),
        ("image/jpeg;q=0.5, */*", "png"),  # PNG is acceptable at q=1 through */*
        ("image/jpeg, image/webp", "jpeg"),  # equal q: the header's order
        ("image/webp, image/jpeg", "webp"),
        ("image/jpeg;q=0.5, image/webp;q=0.9", "webp"),
        ("image/*;q=0.1, image/jpeg;q=0.2", "jpeg"),
        ("image/jpeg;q=0", "png"),
        ("image/jpeg;q=nonsense", "png"),
        (",;,;", "png"),
    ],
)
def test_format_from_accept(accept: str | None, fmt: str) -> None:
    assert imaging.format_from_accept(accept) == fmt


def test_resize_to_max_side_keeps_aspect_and_never_upscales() -> None:
    img = DecodedImage(rgb=np.zeros((30, 120, 3), np.uint8), alpha=np.zeros((30, 120), np.uint8))
    small = imaging.resize_to_max_side(img, 60)
    assert small.rgb.shape == (15, 60, 3) and small.alpha.shape == (15, 60)
    assert imaging.resize_to_max_side(img, 500) is img
    assert imaging.resize_to_max_side(img, None) is img


@pytest.mark.parametrize("size", [(37, 23), (1, 1), (3, 50), (64, 64)])
def test_translate_pads_and_crops_back(zoo: Zoo, size: tuple[int, int]) -> None:
    rgb = np.asarray(_photo(*size))
    alpha = np.full(rgb.shape[:2], 77, np.uint8)
    out = imaging.translate_image(zoo.get("tiny-translate"), DecodedImage(rgb=rgb, alpha=alpha))
    assert out.rgb.shape == rgb.shape  # never distorted, never resized
    assert np.abs(out.rgb.astype(int) - (255 - rgb.astype(int))).max() <= 1  # the tiny model inverts
    assert out.alpha is alpha  # carried through unchanged


def test_a_full_resolution_network_runs_bounded_and_answers_at_the_input_size(zoo: Zoo) -> None:
    rgb = np.asarray(_photo(300, 200))
    alpha = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    img = DecodedImage(rgb=rgb, alpha=alpha)
    out = imaging.translate_image(zoo.get("tiny-translate"), img, fullres_max_side=120)
    assert out.rgb.shape == rgb.shape and out.processed_size == (120, 80)
    assert out.alpha is alpha  # the input's own alpha, never resized
    diff = np.abs(out.rgb.astype(int) - (255 - rgb.astype(int)))
    assert diff.mean() < 8 and diff.max() > 1  # the inversion, through a 120 x 80 copy
    # resized copies run at that size exactly: the same as translating the downscaled image
    small = imaging.resize_to_max_side(img, 120)
    want = imaging.translate_image(zoo.get("tiny-translate"), small).rgb
    got = np.asarray(Image.fromarray(out.rgb).resize((120, 80), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(got - want.astype(int)).mean() < 3
    # within the bound, off, or a resolution-free model: the image itself, exactly
    for name, bound in (("tiny-translate", 300), ("tiny-translate", None), ("free", 120)):
        same = imaging.translate_image(zoo.get(name), img, fullres_max_side=bound)
        assert same.processed_size is None
        assert np.abs(same.rgb.astype(int) - (255 - rgb.astype(int))).max() <= 1
    grey = imaging.translate_image(zoo.get("grey"), img, fullres_max_side=120)  # one output channel
    assert grey.rgb.shape == rgb.shape and grey.was_grey and grey.processed_size == (120, 80)
    np.testing.assert_array_equal(grey.rgb[:, :, 0], grey.rgb[:, :, 2])


def test_translate_multiple_of_8_smaller_than_the_pad(zoo: Zoo) -> None:
    rgb = np.asarray(_photo(5, 3))
    out = imaging.translate_image(zoo.get("mult8"), DecodedImage(rgb=rgb))
    assert out.rgb.shape == (3, 5, 3)
    assert np.abs(out.rgb.astype(int) - (255 - rgb.astype(int))).max() <= 1


def test_pad_to_multiple_reflects() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    y = imaging.pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(y[0, 0, :2, :3], x[0, 0])
    assert y[0, 0, 0, 3] == x[0, 0, 0, 1]  # reflection, not zeros or edge
    assert imaging.pad_to_multiple(x, 1) is x


def test_grey_model_gives_grey_output(zoo: Zoo) -> None:
    rgb = np.asarray(_photo())
    out = imaging.translate_image(zoo.get("grey"), DecodedImage(rgb=rgb))
    assert out.was_grey and out.rgb.shape == rgb.shape
    np.testing.assert_array_equal(out.rgb[:, :, 0], out.rgb[:, :, 2])
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(out.rgb[:, :, 0].astype(int) - (255 - luma)).max() <= 1
    assert Image.open(io.BytesIO(imaging.encode_image(out)[0])).mode == "L"


# -- upscale -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-upscale", "x3"])
def test_tiled_upscale_equals_untiled(zoo: Zoo, name: str) -> None:
    model = zoo.get(name)
    s = model.card.scale
    rgb = np.asarray(_photo(70, 45))
    img = DecodedImage(rgb=rgb, alpha=np.full((45, 70), 200, np.uint8))
    whole = imaging.upscale_image(model, img, tile=0)
    tiled = imaging.upscale_image(model, img, tile=16, overlap=4)
    assert whole.rgb.shape == tiled.rgb.shape == (45 * s, 70 * s, 3)
    assert np.abs(whole.rgb.astype(int) - tiled.rgb.astype(int)).max() <= 1
    assert tiled.alpha.shape == (45 * s, 70 * s) and (tiled.alpha == 200).all()
    # and the result is really the model's: a blurred, enlarged copy of the input
    small = np.asarray(Image.fromarray(tiled.rgb).resize((70, 45), Image.Resampling.BOX)).astype(int)
    assert np.abs(small - rgb.astype(int)).mean() < 12


def test_upscale_without_overlap_shows_seams(zoo: Zoo) -> None:
    # guards the test above: with no overlap the blur sees the tile edge, so tiles differ
    model = zoo.get("tiny-upscale")
    img = DecodedImage(rgb=np.asarray(_photo(64, 64)))
    whole = imaging.upscale_image(model, img, tile=0)
    seamy = imaging.upscale_image(model, img, tile=16, overlap=0)
    assert np.abs(whole.rgb.astype(int) - seamy.rgb.astype(int)).max() > 5


# -- sample --------------------------------------------------------------------------------------


def test_sample_is_deterministic_per_seed_and_label(zoo: Zoo) -> None:
    m = zoo.get("tiny-sample")
    a = imaging.sample_images(m, label=1, n=5, seed=7)
    assert a.shape == (5, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, imaging.sample_images(m, label=1, n=5, seed=7))
    assert not np.array_equal(a, imaging.sample_images(m, label=1, n=5, seed=8))
    assert not np.array_equal(a, imaging.sample_images(m, label=2, n=5, seed=7))
    np.testing.assert_array_equal(a[:3], imaging.sample_images(m, label=1, n=3, seed=7))  # prefix-stable
    with pytest.raises(ValueError, match="out of range"):
        imaging.sample_images(m, label=3, n=1, seed=0)


def test_make_grid_layout() -> None:
    images = np.stack([np.full((4, 6, 1), i * 10, np.uint8) for i in range(1, 6)])
    grid = imaging.make_grid(images, pad=1)  # 5 images -> 3 per row, 2 rows
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 1)
    assert grid[1, 1, 0] == 10 and grid[1 + 5, 1 + 7, 0] == 50 and grid[0, 0, 0] == 0
    assert imaging.make_grid(images, nrow=5, pad=0).shape == (4, 30, 1)


# -- encoding ------------------------------------------------------------------------------------


def test_encode_formats_and_alpha() -> None:
    rgb = np.asarray(_photo())
    img = DecodedImage(rgb=rgb, alpha=np.full(rgb.shape[:2], 128, np.uint8))
    png, media = imaging.encode_image(img, "png")
    assert media == "image/png"
    back = Image.open(io.BytesIO(png))
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[:, :, :3], rgb)
    jpg, media = imaging.encode_image(img, "JPG")
    assert media == "image/jpeg" and Image.open(io.BytesIO(jpg)).mode == "RGB"  # alpha dropped
    webp, media = imaging.encode_image(img, "webp")
    assert media == "image/webp" and Image.open(io.BytesIO(webp)).mode == "RGBA"
    with pytest.raises(ImageError, match="use one of png, jpeg, webp"):
        imaging.encode_image(img, "bmp")
    grey, _ = imaging.encode_image(np.zeros((4, 4, 1), np.uint8))
    assert Image.open(io.BytesIO(grey)).size == (4, 4)


@pytest.mark.parametrize(
    "shape", [(7, 5), (7, 5, 1), (7, 5, 2), (7, 5, 3), (7, 5, 4), (1, 1, 3), (300, 2, 4)]
)
def test_png_answers_decode_to_the_exact_pixels(shape: tuple[int, ...]) -> None:
    from service.png import encode_png

    arr = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    back = Image.open(io.BytesIO(encode_png(arr)))
    back.load()  # checks the CRCs and the zlib stream
    channels = shape[2] if len(shape) == 3 else 1
    assert back.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    want = arr if len(shape) == 2 or shape[2] != 1 else arr[:, :, 0]
    assert np.array_equal(np.asarray(back), want)
    with pytest.raises(ValueError, match="8-bit"):
        encode_png(arr.astype(np.uint16))
    with pytest.raises(ValueError, match="expected"):
        encode_png(np.zeros((2, 2, 5), np.uint8))


def test_tile_places_ragged_rows_at_the_top_left() -> None:
    a, b, c = np.full((2, 3, 1), 1, np.uint8), np.full((4, 1, 1), 2, np.uint8), np.full((1, 1), 3, np.uint8)
    grid = tile([[a, b], [c]], pad=1, pad_value=9, border=False)
    # each row as high as its highest image, the grid as wide as its widest row
    assert grid.shape == (4 + 1 + 1, 3 + 1 + 1, 1)
    assert (grid[:2, :3] == 1).all() and (grid[:4, 4] == 2).all() and grid[5, 0] == 3
    assert grid[2, 0] == 9 and grid[4, 0] == 9 and (grid[:, 3] == 9).all()  # the gaps
    assert tile([[a]], pad=2).shape == (6, 7, 1)  # the border
