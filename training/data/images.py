"""Opening images from disk as RGB uint8, whatever Pillow can read, and listing image folders.

Corrupt-file policy (one rule, everywhere in training/data): when a folder is **indexed**, each
file is opened and verified by Pillow; files that fail are **skipped with a warning** naming them
(one bad download must not kill a long run). A file that passes the check but still fails to decode
later raises :class:`ImageLoadError` naming the file, which stops training with a clear message.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Pillow knows many formats; take every extension it registers (jpg, png, webp, bmp, tiff, ...).
IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())


class ImageLoadError(OSError):
    """An image file could not be decoded; the message names the file."""


class EmptyFolderError(FileNotFoundError):
    """A dataset folder is missing or holds no readable images."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return (np.clip(np.nan_to_num(arr) / hi, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # integer images: 16-bit (and 32-bit "I" mode holding 16-bit data) -> keep the top 8 bits
    bits = 16 if int(arr.max(initial=0)) <= 0xFFFF else 32
    return (arr.astype(np.uint64) >> (bits - 8)).astype(np.uint8)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow image -> RGB (8 bit): EXIF orientation applied; alpha composited over
    ``background`` (white, like a viewer shows it); grey, palette, CMYK, 16-bit and float converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        img = Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX
    return img


def open_image(path: str | Path) -> Image.Image:
    """Read ``path`` as an RGB uint8 Pillow image (see :func:`to_rgb`); raises ImageLoadError."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{path}: cannot read image ({e}); delete or replace the file") from e


def load_rgb_array(path: str | Path) -> np.ndarray:
    """``H x W x 3`` uint8 array of the image at ``path``."""
    return np.asarray(open_image(path), dtype=np.uint8)


def is_readable_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # Pillow raises many types for bad data; any of them means "skip"
        return False


def list_images(folder: str | Path, verify: bool = True) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (byte order, as ``LC_ALL=C sort``).

    Hidden files and files whose extension Pillow does not know are ignored. With ``verify``,
    unreadable files are skipped with one warning naming them (see the module's corrupt-file policy).
    Raises EmptyFolderError when the folder is missing or holds no usable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder}: folder not found; check the --data path and the dataset layout")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.name.encode("utf-8", "surrogateescape"),
    )
    files = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if verify:
        bad = [p for p in files if not is_readable_image(p)]
        if bad:
            names = ", ".join(p.name for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            warnings.warn(f"{folder}: skipping {len(bad)} unreadable image file(s): {names}", stacklevel=2)
            files = [p for p in files if p not in set(bad)]
    if not files:
        raise EmptyFolderError(
            f"{folder}: no readable images (extensions Pillow knows, e.g. .jpg .png .webp); add images or fix the path"
        )
    return files


def holdout_split(files: Iterable[str | Path], every: int = 10) -> tuple[list[Path], list[Path]]:
    """Deterministic train/test split of a folder without one: sort by file name, every
    ``every``-th file (the 1st, 11th, 21st, ... for 10) is test, the rest train. Training and
    evaluation both call this, so a test image is never trained on. ``every <= 0``: all train."""
    ordered = sorted((Path(f) for f in files), key=lambda p: p.name.encode("utf-8", "surrogateescape"))
    if every <= 0:
        return ordered, []
    if every == 1:
        raise ValueError(
            "holdout every=1 would put every file in the test split; use >= 2 (or 0 for no split)"
        )
    test = [p for i, p in enumerate(ordered) if i % every == 0]
    train = [p for i, p in enumerate(ordered) if i % every != 0]
    return train, test
