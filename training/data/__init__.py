"""Datasets and their albumentations pipelines. See ``images.py`` for the corrupt-file policy."""

from training.data.images import (
    EmptyFolderError,
    ImageLoadError,
    holdout_split,
    list_images,
    load_rgb_array,
    open_image,
    to_rgb,
)
from training.data.paired import PairedImageFolder, resolve_paired_files
from training.data.transforms import default_load_size, eval_transform, train_transform
from training.data.unpaired import ImageFiles, UnpairedImageFolder, resolve_unpaired_files

__all__ = [
    "EmptyFolderError",
    "ImageFiles",
    "ImageLoadError",
    "PairedImageFolder",
    "UnpairedImageFolder",
    "default_load_size",
    "eval_transform",
    "holdout_split",
    "list_images",
    "load_rgb_array",
    "open_image",
    "resolve_paired_files",
    "resolve_unpaired_files",
    "to_rgb",
    "train_transform",
]
