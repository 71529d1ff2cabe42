"""Labelled image sets for class-conditional GANs and their judge classifier.

Three formats, recognised from the folder's content (:func:`detect_format`):

* **Quick, Draw!** numpy bitmaps: a folder of ``<category>.npy`` files, each uint8 rows of 784
  values (shape N x 784 or N x 1 x 784; 0 = background, 255 = stroke). The class name is the file
  name; classes are sorted by name.
* **MNIST / Fashion-MNIST idx** files: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte``
  (plain or ``.gz``), and optionally the ``t10k-*`` pair. Class names are the digits, or the
  Fashion-MNIST names when the folder name contains "fashion".
* **ImageFolder**: one sub-folder per class (its name is the class name) of image files; grey or RGB.
  Every class folder must hold at least one readable image.

The train/test split is made in code by :func:`split_indices` — the last ``test_fraction`` of each
class, by index — so it is deterministic, disjoint and the same for training and evaluation
(:func:`load_split`). An idx folder that ships the official ``t10k`` pair uses it as the test split.
Images are served as float tensors in [-1, 1], padded (28 -> 32) or resized to ``image_size``.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from training.config import ConfigError
from training.data.catalog import provenance
from training.data.images import EmptyFolderError, list_images, open_image

FORMATS = ("quickdraw", "idx", "imagefolder")
SPLITS = ("train", "test", "all")
FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


@dataclass
class LabelledArrays:
    """Images as uint8 N x C x H x W, labels as int64 N, and the class names (index -> name)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    format: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledArrays:
        return LabelledArrays(self.images[indices], self.labels[indices], self.classes, self.format)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------
def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def detect_format(folder: str | Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder}: data folder not found; check the --data path")
    if _idx_file(folder, "train-images-idx3-ubyte"):
        return "idx"
    if any(folder.glob("*.npy")):
        return "quickdraw"
    if any(p.is_dir() for p in folder.iterdir()):
        return "imagefolder"
    raise EmptyFolderError(
        f"{folder}: not a labelled data folder. Expected <class>.npy files (Quick, Draw!), "
        "train-images-idx3-ubyte(.gz) + train-labels-idx1-ubyte(.gz) (MNIST), or one sub-folder per class"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (plain or gzip): big-endian magic, dims, then uint8 data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an idx file")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {body.size} values (truncated?)")
    return body.reshape(shape)


def _load_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    return read_idx(images)[:, None], read_idx(labels).astype(np.int64)


def _idx_classes(folder: Path, labels: np.ndarray) -> list[str]:
    if "fashion" in folder.name.lower():
        return list(FASHION_CLASSES)
    return [str(i) for i in range(max(10, int(labels.max()) + 1))]


def load_quickdraw(folder: str | Path) -> LabelledArrays:
    folder = Path(folder)
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise EmptyFolderError(f"{folder}: no .npy files")
    images, labels = [], []
    for i, path in enumerate(files):
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8 or arr.shape[-1] != 784:
            raise ValueError(
                f"{path}: expected uint8 rows of 784 values (Quick, Draw! numpy_bitmap), "
                f"got {arr.dtype} {arr.shape}"
            )
        images.append(arr.reshape(-1, 1, 28, 28))
        labels.append(np.full(len(images[-1]), i, dtype=np.int64))
    return LabelledArrays(
        np.concatenate(images), np.concatenate(labels), [p.stem for p in files], "quickdraw"
    )


def load_image_folder(folder: str | Path, image_size: int, channels: int | None = None) -> LabelledArrays:
    """Sub-folder per class; images resized (bicubic) to ``image_size`` square. ``channels`` None:
    1 if every image is grey (R = G = B after decoding), else 3. Decoding goes through
    ``training.data.images.open_image`` (EXIF orientation, alpha, palette and 16-bit handled)."""
    folder = Path(folder)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    # the project's corrupt-file policy: unreadable files are skipped with a warning
    files = [(i, f) for i, d in enumerate(class_dirs) for f in list_images(d)]
    size = (image_size, image_size)
    rgb = [open_image(f).resize(size, Image.Resampling.BICUBIC) for _, f in files]
    if channels is None:
        grey = all(np.ptp(np.asarray(im), axis=2).max() == 0 for im in rgb)
        channels = 1 if grey else 3
    if channels == 1:
        images = np.stack([np.asarray(im.convert("L")) for im in rgb])[:, None]
    else:
        images = np.stack([np.asarray(im) for im in rgb]).transpose(0, 3, 1, 2)
    labels = np.array([i for i, _ in files], dtype=np.int64)
    return LabelledArrays(np.ascontiguousarray(images), labels, [d.name for d in class_dirs], "imagefolder")


# ------------------------------------------------------------------------------------------------
# split
# ------------------------------------------------------------------------------------------------
def split_indices(labels: np.ndarray, test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: the last ``test_fraction`` of each class, in file order, is test.
    Deterministic (no RNG) and disjoint; a class with at least 2 items gets at least 1 test item."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = round(len(idx) * test_fraction)
        if test_fraction > 0 and n_test == 0 and len(idx) >= 2:
            n_test = 1
        train.append(idx[: len(idx) - n_test])
        test.append(idx[len(idx) - n_test :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_labelled(folder: str | Path, image_size: int = 28, channels: int | None = None) -> LabelledArrays:
    """Every labelled image in ``folder`` (for idx: the train files only)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    if fmt == "quickdraw":
        return load_quickdraw(folder)
    if fmt == "idx":
        pair = _load_idx_pair(folder, "train")
        assert pair is not None
        return LabelledArrays(pair[0], pair[1], _idx_classes(folder, pair[1]), "idx")
    return load_image_folder(folder, image_size, channels)


def load_split(
    folder: str | Path,
    split: str = "train",
    test_fraction: float = 0.1,
    classes: list[str] | tuple[str, ...] | None = None,
    image_size: int = 28,
    channels: int | None = None,
) -> LabelledArrays:
    """One split of a labelled folder — the single function training and evaluation both use.

    ``classes``: keep only these (in this order; labels are renumbered to match). For idx folders
    with the official ``t10k`` pair, ``test`` is that pair and ``train`` all of the train files."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    folder = Path(folder)
    data = load_labelled(folder, image_size, channels)
    official_test = _load_idx_pair(folder, "t10k") if data.format == "idx" else None
    if official_test is not None and split == "test":
        data = LabelledArrays(official_test[0], official_test[1], data.classes, "idx")
    elif official_test is None and split != "all":
        train, test = split_indices(data.labels, test_fraction)
        data = data.subset(train if split == "train" else test)
    if classes:
        data = select_classes(data, list(classes))
    return data


def select_classes(data: LabelledArrays, classes: list[str]) -> LabelledArrays:
    missing = [c for c in classes if c not in data.classes]
    if missing:
        raise ValueError(f"class(es) {missing} not in the data; it has {data.classes}")
    old = [data.classes.index(c) for c in classes]
    keep = np.isin(data.labels, old)
    remap = np.full(len(data.classes), -1, dtype=np.int64)
    remap[old] = np.arange(len(old))
    return LabelledArrays(data.images[keep], remap[data.labels[keep]], list(classes), data.format)


# ------------------------------------------------------------------------------------------------
# torch side
# ------------------------------------------------------------------------------------------------
def to_model_range(images: np.ndarray, image_size: int) -> Tensor:
    """uint8 N x C x H x W -> float N x C x S x S in [-1, 1]; 28 -> 32 by padding with background
    (-1, so the drawing keeps its scale), any other mismatch by bilinear resizing."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    h, w = x.shape[-2:]
    if (h, w) == (image_size, image_size):
        return x
    if h == w and image_size > h and (image_size - h) % 2 == 0 and image_size - h <= 8:
        p = (image_size - h) // 2
        return F.pad(x, (p, p, p, p), value=-1.0)
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)


class LabelledImages(torch.utils.data.Dataset):
    """(image, label) pairs: image float C x S x S in [-1, 1], label int64. Held in memory (the
    Quick, Draw! subset is 18k x 784 bytes). No augmentation: flips would change what a digit or a
    doodle means, so items are deterministic and resume needs no per-item seed."""

    def __init__(self, data: LabelledArrays, image_size: int = 28) -> None:
        if len(data) == 0:
            raise ValueError("the labelled data set is empty (check --data and --classes)")
        self.data = data
        self.images = to_model_range(data.images, image_size)
        self.labels = torch.from_numpy(data.labels)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def describe_dataset(
    folder: str | Path,
    test_fraction: float = 0.1,
    classes: list[str] | tuple[str, ...] | None = None,
    image_size: int = 28,
    channels: int | None = None,
) -> dict:
    """What a model card says about the data: provenance (name, source, license) + split sizes.
    A folder that is gone (a run exported elsewhere) gives the provenance with empty sizes."""
    info: dict = {**provenance(folder).as_dict(), "split_sizes": {}}
    if Path(folder).is_dir():
        for split in ("train", "test"):
            info["split_sizes"][split] = len(
                load_split(folder, split, test_fraction, classes, image_size, channels)
            )
    return info


def resolve_data_fields(config):
    """``config`` (a recipe Config on labelled data: ``data``, ``classes``, ``channels``,
    ``image_size``, ``test_fraction``) with ``classes`` and ``channels`` filled in from its data; they
    become part of the saved config, so the checkpoint can rebuild the nets."""
    if not config.data:
        return config
    try:
        data = load_split(
            config.data, "train", config.test_fraction, config.classes or None, config.image_size,
            config.channels or None,
        )  # fmt: skip
    except ValueError as e:  # a wrong --classes or an unreadable file: the user can fix it
        raise ConfigError(f"{config.data}: {e}") from None
    return dataclasses.replace(config, classes=tuple(data.classes), channels=int(data.images.shape[1]))


def load_train_set(config) -> LabelledImages:
    """The train split of ``config.data``, checked against the classes the run was started with."""
    if not config.data:
        raise ConfigError("no training data: pass --data FOLDER (see --help for the formats)")
    data = load_split(
        config.data, "train", config.test_fraction, list(config.classes), config.image_size, config.channels
    )
    if data.images.shape[1] != config.channels:
        raise ConfigError(
            f"{config.data}: images have {data.images.shape[1]} channels, the run has {config.channels}"
        )
    return LabelledImages(data, config.image_size)
