"""Images in and out: decode and check uploads, run models on them, encode the answer.

One pre/post-processing path for the HTTP service and the batch job; imports no BentoML and no
torch. Every problem with an input raises ``ImageError`` whose message is safe to show a client.

Choices a user can observe:
* Orientation: the EXIF orientation tag is applied before anything else.
* Modes: grey, grey+alpha, palette (with or without transparency), 16-bit and 32-bit integer,
  float, CMYK, YCbCr and RGBA inputs are all turned into 8-bit RGB plus an optional alpha plane;
  16-bit values are scaled (v / 257), not clipped.
* Animated images (GIF, APNG, WebP): the first frame is used.
* Size: an image is translated at its own resolution; ``Limits.max_side`` (off by default) is an
  opt-in downscale. The limits (bytes, pixels, aspect) refuse what is too large instead.
* Full-resolution networks: a translate model whose card says ``input.multiple_of > 1`` (a U-Net,
  a ResNet CycleGAN) needs memory and time in proportion to the pixels it runs on, so it runs on a
  copy whose longer side is at most ``Limits.fullres_max_side`` (1024 by default), and its output
  is resized back to the image's size; the output records the size the network ran at
  (``DecodedImage.processed_size``). Resolution-free translators (``multiple_of`` 1) always run on
  the image itself (``network_size``).
* Small images: there is no minimum size by default (``min_side=1``). Images are padded to the
  model's ``multiple_of`` (and to at least ``MIN_TRANSLATE_SIDE`` for translation) by reflection,
  which numpy repeats for pads wider than the image (a 1-pixel side is replicated); the
  padding is cropped off again, so the output always has the input's size (times ``scale``).
* Alpha is never sent through a model: translation carries it unchanged, upscaling resizes it
  bicubically.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.card import IMAGE_INPUT, LABEL_INPUT, Z_INPUT, ImageSpec, ModelCard
from models.grid import tile
from service.png import encode_png

if TYPE_CHECKING:  # keep this module importable for type checkers without onnxruntime at import time
    from service.zoo import LoadedModel

# A ResNet generator downsamples by 4 and reflection-pads by 1 at that scale, which fails on a
# 1-pixel feature map; padding translation inputs to at least 32 px keeps every such net valid.
MIN_TRANSLATE_SIDE = 32
MIN_UPSCALE_SIDE = 8
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
FORMAT_ALIASES = {"jpg": "jpeg"}
DEFAULT_FORMAT = "png"
# WebP's encoder effort: method 4 searches harder than method 0 for 2.5x the time (a 12-MP photo:
# 1.64 against 0.66 s on 2 cores, and no smaller at quality 95); large answers get the fast setting.
WEBP_FAST_ABOVE_PIXELS = 2_000_000
# Input formats PIL may decode (JPEG includes MPO, the variant many phone cameras write). Without a
# list PIL tries every plugin it has, e.g. EPS, which runs Ghostscript on the upload where installed.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(ValueError):
    """A problem with an input image; the message is safe to show the client.

    ``status_code`` is the HTTP status the service answers with (413 for oversized uploads).
    """

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


# -- limits ------------------------------------------------------------------------------------


@dataclass
class Limits:
    """What an input image may be. Defaults are safe for a 2-CPU pod with a few GiB of memory.

    The service and ``transfigure batch`` take them from the environment (``service.config``).
    """

    max_bytes: int = 20 * 1024 * 1024  # encoded upload size
    max_pixels: int = 40_000_000  # decoded width x height, checked before decoding (bombs)
    max_side: int | None = None  # translate: downscale so the longer side is at most this (None: never)
    # translate models with input.multiple_of > 1: run the network at most this side, resize back (None: never)
    fullres_max_side: int | None = 1024
    min_side: int = 1  # shorter side below this is refused
    max_aspect: float = 32.0  # longer side / shorter side above this is refused
    max_upscale_pixels: int = 4_000_000  # upscale input; the output is scale^2 times larger
    tile: int = 256  # upscale tile side in input pixels (bounded memory)
    tile_overlap: int = 16  # context each tile sees beyond its edges, in input pixels


# -- decoding ----------------------------------------------------------------------------------


@dataclass
class DecodedImage:
    rgb: np.ndarray  # H x W x 3 uint8
    alpha: np.ndarray | None = None  # H x W uint8
    source_format: str = ""  # "png", "jpeg", ... ("" when made in memory)
    was_grey: bool = False  # encode as grey (L / LA) when True
    extra: dict[str, object] = field(default_factory=dict)  # e.g. {"frames": 12} for animations
    # a translation's output: the (width, height) its network ran at, when smaller than the image
    processed_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.rgb.shape[1], self.rgb.shape[0]


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def check_size(width: int, height: int, limits: Limits) -> None:
    """Refuse sizes outside ``limits`` (called with the declared size, before pixels are decoded)."""
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} ({_mp(width * height)}); the limit is {_mp(limits.max_pixels)}: "
            "downscale it before sending",
            status_code=413,
        )
    if min(width, height) < limits.min_side:
        raise ImageError(f"image is {width}x{height}; each side must be at least {limits.min_side} px")
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > limits.max_aspect:
        raise ImageError(
            f"image is {width}x{height}, an aspect ratio of {aspect:.0f}:1; the limit is {limits.max_aspect:g}:1"
        )


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale integer / float planes of the wide modes to 0..255."""
    if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
        return np.clip(arr.astype(np.float32) / 257.0, 0, 255).round().astype(np.uint8)
    if mode == "F":
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _split_modes(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Any PIL image -> (H x W x 3 uint8, alpha or None, was_grey)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode in {"L", "I", "F"} or mode.startswith("I;16"):
        grey = np.asarray(im)
        grey = grey if grey.dtype == np.uint8 else _to_uint8(grey, mode)
        return np.repeat(grey[:, :, None], 3, axis=2), None, True
    if mode in {"LA", "La"}:
        arr = np.asarray(im.convert("LA"))
        return np.repeat(arr[:, :, :1], 3, axis=2), np.ascontiguousarray(arr[:, :, 1]), True
    if mode in {"RGBA", "RGBa"}:
        arr = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3]), False
    # RGB, RGBX, CMYK, YCbCr, LAB, HSV, ... : PIL knows how to reach RGB (RGB skips the conversion's copy)
    return np.array(im if mode == "RGB" else im.convert("RGB")), None, False


def _open_checked(data: bytes, limits: Limits) -> Image.Image:
    """Open ``data`` lazily (the header only) and refuse it if its bytes or declared size break ``limits``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("the image must be sent as a file (multipart upload), not as text or a URL")
    if len(data) == 0:
        raise ImageError("the image file is empty (0 bytes): send a PNG, JPEG or WebP file")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"the image file is {len(data)} bytes; the limit is {limits.max_bytes} bytes", status_code=413
        )
    with warnings.catch_warnings():
        # our own pixel limit applies; PIL's bomb warning would only add noise to the log
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(bytes(data)), formats=INPUT_FORMATS)
        except Image.DecompressionBombError:
            raise ImageError(
                f"image declares too many pixels; the limit is {_mp(limits.max_pixels)}", status_code=413
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageError(
                "the file is not an image this service can read (use PNG, JPEG, WebP, GIF, BMP or TIFF)"
            ) from None
        # The header's size is known before any pixel is decoded: refuse bombs here.
        check_size(im.width, im.height, limits)
    return im


def peek_size(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) as the file declares it, after the checks of ``decode_image`` that need no pixels.

    Cheap (the header only): the service reserves memory for a request with it before decoding.
    EXIF orientation may swap the two; the pixel count is the same.
    """
    return _open_checked(data, limits).size


def decode_image(data: bytes, limits: Limits) -> DecodedImage:
    """Decode an upload with our own checks; never fetches anything, only reads ``data``."""
    with warnings.catch_warnings():
        # our own pixel limit applies; PIL's bomb warning would only add noise to the log
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open_checked(data, limits)
        fmt = (im.format or "").lower()
        frames = getattr(im, "n_frames", 1)
        try:
            if frames > 1:
                im.seek(0)  # animated: the first frame only (documented)
            im.load()
        except Image.DecompressionBombError:
            raise ImageError(
                f"image is too large; the limit is {_mp(limits.max_pixels)}", status_code=413
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError):
            raise ImageError(f"the {fmt or 'image'} file is truncated or corrupt") from None
        # a malformed EXIF block must not fail the request: keep the pixels as stored
        with contextlib.suppress(Exception):
            im = ImageOps.exif_transpose(im) or im
        rgb, alpha, grey = _split_modes(im)
    extra: dict[str, object] = {"frames": frames} if frames > 1 else {}
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=fmt, was_grey=grey, extra=extra)


# -- resizing ----------------------------------------------------------------------------------


def _resize_plane(arr: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize(size, resample))


def _resize_planes(arr: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """H x W x C uint8 -> size[1] x size[0] x C, one plane at a time (no 4-byte-per-pixel RGBX copy)."""
    out = np.empty((size[1], size[0], arr.shape[2]), np.uint8)
    for c in range(arr.shape[2]):
        out[:, :, c] = _resize_plane(np.ascontiguousarray(arr[:, :, c]), size, resample)
    return out


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down (never up) so that the longer side is at most ``max_side``."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return size
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def resize_to_max_side(img: DecodedImage, max_side: int | None) -> DecodedImage:
    """Downscale (never upscale) so that the longer side is at most ``max_side``; keeps the aspect."""
    size = fit_within(img.size, max_side)
    if size == img.size:
        return img
    rgb = _resize_plane(img.rgb, size, Image.Resampling.LANCZOS)
    alpha = None if img.alpha is None else _resize_plane(img.alpha, size, Image.Resampling.LANCZOS)
    return replace(img, rgb=rgb, alpha=alpha)


# -- tensors -----------------------------------------------------------------------------------


def to_tensor(rgb: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """H x W x 3 uint8 -> 1 x C x H x W float32 in ``spec.range`` (C = 1 uses ITU-R 601 luma)."""
    lo, hi = spec.range
    scale = np.float32((hi - lo) / 255.0)
    if spec.channels == 1:
        x = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]
        return x * scale + np.float32(lo)
    # One channel at a time straight into the output: a 12-MP photo costs one float copy, not four.
    h, w = rgb.shape[:2]
    x = np.empty((1, 3, h, w), np.float32)
    for c in range(3):
        np.multiply(rgb[:, :, c], scale, out=x[0, c], dtype=np.float32)
        x[0, c] += np.float32(lo)
    return x


def from_tensor(y: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """N x C x H x W float in ``spec.range`` -> N x H x W x C uint8 (values clipped to the range)."""
    lo, hi = spec.range
    n, c, h, w = y.shape
    out = np.empty((n, h, w, c), np.uint8)
    plane = np.empty((h, w), np.float32)  # one plane of scratch, reused: bounded memory at 12 MP
    for i in range(n):
        for k in range(c):
            np.clip(y[i, k], lo, hi, out=plane)
            plane -= lo
            plane *= 255.0 / (hi - lo)
            out[i, :, :, k] = np.rint(plane, out=plane)
    return out


def pad_to_multiple(x: np.ndarray, multiple: int, min_side: int = 1) -> np.ndarray:
    """Reflect-pad N x C x H x W at the bottom/right to multiples of ``multiple`` (>= ``min_side``)."""
    h, w = x.shape[-2:]
    th = max(math.ceil(h / multiple) * multiple, math.ceil(min_side / multiple) * multiple)
    tw = max(math.ceil(w / multiple) * multiple, math.ceil(min_side / multiple) * multiple)
    if (th, tw) == (h, w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, th - h), (0, tw - w)), mode="reflect")


def _rgb(planes: np.ndarray) -> np.ndarray:
    """H x W x C (C = 1 or 3) -> H x W x 3."""
    return planes if planes.shape[2] == 3 else np.repeat(planes[:, :, :1], 3, axis=2)


def _run_images(model: LoadedModel, rgbs: list[np.ndarray], scale: int, min_side: int) -> np.ndarray:
    """One inference on whole H x W x 3 images of one size: pad, run, crop; N x H*scale x W*scale x C uint8."""
    card = model.card
    assert card.input is not None
    h, w = rgbs[0].shape[:2]
    if any(rgb.shape[:2] != (h, w) for rgb in rgbs):
        raise ValueError("images run in one inference must have one size")
    x = (
        to_tensor(rgbs[0], card.input)
        if len(rgbs) == 1
        else np.concatenate([to_tensor(r, card.input) for r in rgbs])
    )
    x = pad_to_multiple(x, card.input.multiple_of, min_side)
    y = model.run({IMAGE_INPUT: x})
    ph, pw = x.shape[-2:]
    if y.ndim != 4 or y.shape[0] != len(rgbs) or y.shape[-2:] != (ph * scale, pw * scale):
        raise RuntimeError(
            f"model '{model.name}' returned shape {tuple(y.shape)} for input {tuple(x.shape)}; "
            f"expected {len(rgbs)} x C x {ph * scale} x {pw * scale} (its card says scale {scale})"
        )
    return from_tensor(y[:, :, : h * scale, : w * scale], card.output)


def _run_image(model: LoadedModel, rgb: np.ndarray, scale: int, min_side: int) -> np.ndarray:
    """One inference on a whole H x W x 3 image: pad, run, crop to (H*scale, W*scale); H x W x C uint8."""
    return _run_images(model, [rgb], scale, min_side)[0]


# -- the three tasks ---------------------------------------------------------------------------


def network_size(card: ModelCard, size: tuple[int, int], fullres_max_side: int | None) -> tuple[int, int]:
    """The (width, height) a translate model's network runs at for an image of ``size``.

    A resolution-free translator (``input.multiple_of`` 1: a network on a small copy plus a guided
    filter) runs on the image itself. A full-resolution network (``multiple_of`` > 1) runs on a
    copy whose longer side is at most ``fullres_max_side`` (``TRANSFIGURE_FULLRES_MAX_SIDE``; None:
    the image itself), as its memory and time grow with the pixels.
    """
    if card.input is None or card.input.multiple_of <= 1:
        return size
    return fit_within(size, fullres_max_side)


def translate_images(
    model: LoadedModel, images: list[DecodedImage], fullres_max_side: int | None = None
) -> list[DecodedImage]:
    """Translate whole images of one size in one inference (no tiling: instance norm needs the whole
    picture); each comes out at its own size, with its alpha unchanged.

    Where ``network_size`` is smaller than the images, the network runs on Lanczos-downscaled copies
    and its outputs are resized back (bicubic); ``processed_size`` of each output says so.
    Translate models have a dynamic batch axis and normalise per sample, so batching only changes speed.
    """
    size = images[0].size
    run_size = network_size(model.card, size, fullres_max_side)
    shrunk = run_size != size
    rgbs = [_resize_plane(im.rgb, run_size, Image.Resampling.LANCZOS) if shrunk else im.rgb for im in images]
    outs = _run_images(model, rgbs, scale=1, min_side=MIN_TRANSLATE_SIDE)
    del rgbs
    grey = model.card.output.channels == 1
    results = []
    for i, im in enumerate(images):
        out = _resize_planes(outs[i], size, Image.Resampling.BICUBIC) if shrunk else outs[i]
        results.append(
            DecodedImage(
                rgb=_rgb(out),
                alpha=im.alpha,
                source_format=im.source_format,
                was_grey=grey,
                processed_size=run_size if shrunk else None,
            )
        )
    return results


def translate_image(
    model: LoadedModel, img: DecodedImage, fullres_max_side: int | None = None
) -> DecodedImage:
    """Translate one image (``translate_images``); same size out."""
    return translate_images(model, [img], fullres_max_side)[0]


def upscale_image(model: LoadedModel, img: DecodedImage, tile: int = 256, overlap: int = 16) -> DecodedImage:
    """Super-resolve in tiles of ``tile`` px that each see ``overlap`` px of context beyond their edge.

    Only each tile's centre is kept, so seams vanish when the net's receptive field fits in the
    overlap; memory is bounded by one tile plus the output. ``tile <= 0`` runs the whole image.
    """
    card = model.card
    assert card.scale is not None
    s = card.scale
    h, w = img.rgb.shape[:2]
    if tile <= 0 or (h <= tile and w <= tile):
        out = _rgb(_run_image(model, img.rgb, scale=s, min_side=MIN_UPSCALE_SIDE))
    else:
        out = np.empty((h * s, w * s, 3), np.uint8)
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ey0, ex0 = max(0, y0 - overlap), max(0, x0 - overlap)
                ey1, ex1 = min(h, y1 + overlap), min(w, x1 + overlap)
                part = _run_image(model, img.rgb[ey0:ey1, ex0:ex1], scale=s, min_side=MIN_UPSCALE_SIDE)
                oy, ox = (y0 - ey0) * s, (x0 - ex0) * s
                out[y0 * s : y1 * s, x0 * s : x1 * s] = _rgb(
                    part[oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
                )
    alpha = None
    if img.alpha is not None:
        alpha = _resize_plane(img.alpha, (w * s, h * s), Image.Resampling.BICUBIC)
    return DecodedImage(
        rgb=out, alpha=alpha, source_format=img.source_format, was_grey=card.output.channels == 1
    )


def sample_latents(latent_dim: int, n: int, seed: int) -> np.ndarray:
    """The z of ``n`` samples for ``seed``: the same seed always gives the same z (and images)."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)


def sample_feeds(model: LoadedModel, label: int, n: int, seed: int) -> dict[str, np.ndarray]:
    card = model.card
    assert card.latent_dim is not None and card.classes is not None
    if not 0 <= label < len(card.classes):
        raise ValueError(
            f"label {label} is out of range for model '{model.name}': use 0..{len(card.classes) - 1}"
        )
    return {Z_INPUT: sample_latents(card.latent_dim, n, seed), LABEL_INPUT: np.full((n,), label, np.int64)}


def samples_to_uint8(model: LoadedModel, output: np.ndarray) -> np.ndarray:
    """Raw ``output`` (N x C x S x S in the card's range) -> N x S x S x C uint8."""
    return from_tensor(output, model.card.output)


def sample_images(model: LoadedModel, label: int, n: int, seed: int) -> np.ndarray:
    """``n`` samples of class index ``label``: N x S x S x C uint8 (C = the card's output channels)."""
    return samples_to_uint8(model, model.run(sample_feeds(model, label, n, seed)))


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """N x H x W x C uint8 -> one grid image, ``nrow`` images per row (default: about square)."""
    n = len(images)
    nrow = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    return tile([images[i : i + nrow] for i in range(0, n, nrow)], pad=pad, pad_value=pad_value)


# -- encoding ----------------------------------------------------------------------------------


def normalize_format(fmt: str) -> str:
    key = FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if key not in FORMATS:
        raise ImageError(f"unknown output format '{fmt}': use one of {', '.join(FORMATS)}")
    return key


def format_from_accept(accept: str | None) -> str:
    """The answer format an ``Accept`` header asks for: png, jpeg or webp (``DEFAULT_FORMAT`` otherwise).

    Each format gets the q-value of the most specific range that matches it (``image/jpeg`` over
    ``image/*`` over ``*/*``); the highest q wins, then a format named outright over one matched by a
    wildcard, then the header's order, then PNG. So ``image/webp,*/*;q=0.8`` is WebP, while ``*/*``,
    an absent header, or one naming no format served here is PNG (never 406: PNG is always possible).
    """
    if not accept:
        return DEFAULT_FORMAT
    ranges: list[tuple[str, float, int]] = []  # (media range, q, position)
    for position, part in enumerate(accept.split(",")[:64]):  # a header of thousands of ranges is not read
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media and math.isfinite(q):
            ranges.append((media.lower(), min(max(q, 0.0), 1.0), position))
    candidates: list[tuple[float, bool, int, bool, str]] = []
    for key, (_, media_type) in FORMATS.items():
        kind = media_type.split("/")[0]
        names = {media_type, *(f"{kind}/{a}" for a, k in FORMAT_ALIASES.items() if k == key)}
        matches = [
            (3 if m in names else 2 if m == f"{kind}/*" else 1, q, -pos)
            for m, q, pos in ranges
            if m in names or m in (f"{kind}/*", "*/*")
        ]
        if matches:
            specificity, q, neg_pos = max(matches)  # the most specific range decides
            exact = specificity == 3
            if q > 0:
                candidates.append((q, exact, neg_pos if exact else 0, key == DEFAULT_FORMAT, key))
    return max(candidates)[-1] if candidates else DEFAULT_FORMAT


def encode_image(img: DecodedImage | np.ndarray, fmt: str = "png", quality: int = 95) -> tuple[bytes, str]:
    """Encode to png / jpeg / webp; returns (bytes, media type). JPEG drops alpha."""
    key = normalize_format(fmt)
    pil_format, media_type = FORMATS[key]
    if isinstance(img, DecodedImage):
        grey = img.was_grey and bool((img.rgb[:, :, 0] == img.rgb[:, :, 1]).all())
        base = img.rgb[:, :, 0] if grey else img.rgb
        alpha = img.alpha
    else:
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 3 and arr.shape[2] in (2, 4):
            base, alpha = arr[:, :, :-1], arr[:, :, -1]
        else:
            base, alpha = arr, None
        if base.ndim == 3 and base.shape[2] == 1:
            base = base[:, :, 0]
    if key == "png":  # speed over size, as encoding is on the request path (service/png.py)
        planes = base if alpha is None else np.dstack([base, alpha])
        return encode_png(planes), media_type
    im = Image.fromarray(np.ascontiguousarray(base))
    if alpha is not None and key != "jpeg":
        im.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))
    buf = io.BytesIO()
    if key == "jpeg":
        im.save(buf, "JPEG", quality=quality)
    else:
        method = 0 if im.width * im.height > WEBP_FAST_ABOVE_PIXELS else 4
        im.save(buf, "WEBP", quality=quality, method=method)
    return buf.getvalue(), media_type
