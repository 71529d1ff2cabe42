"""Paired images for pix2pix: side-by-side ``AB`` files, or matching files in ``A/`` and ``B/``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from training.data.images import EmptyFolderError, list_images, load_rgb_array
from training.data.transforms import default_load_size, eval_transform, train_transform

DIRECTIONS = ("AtoB", "BtoA")


def resolve_paired_files(root: str | Path, phase: str = "train") -> list[tuple[Path, Path | None]]:
    """``[(ab_file, None), ...]`` for ``root/<phase>/`` holding side-by-side images (the pix2pix
    format, e.g. facades), or ``[(a_file, b_file), ...]`` for ``root/A/<phase>/`` + ``root/B/<phase>/``
    (files matched by name; unmatched ones are reported)."""
    root = Path(root)
    ab = root / phase
    if ab.is_dir():
        return [(p, None) for p in list_images(ab)]
    a_dir, b_dir = root / "A" / phase, root / "B" / phase
    if a_dir.is_dir() and b_dir.is_dir():
        a_files = {p.stem: p for p in list_images(a_dir)}
        b_files = {p.stem: p for p in list_images(b_dir)}
        common = sorted(set(a_files) & set(b_files))
        if not common:
            raise EmptyFolderError(f"{a_dir} and {b_dir}: no file names in common; pairs must share a name")
        missing = sorted(set(a_files) ^ set(b_files))
        if missing:
            warnings.warn(
                f"{root}: {len(missing)} file(s) without a partner ignored, e.g. {missing[0]}", stacklevel=2
            )
        return [(a_files[s], b_files[s]) for s in common]
    raise EmptyFolderError(
        f"{root}: expected {phase}/ with side-by-side AB images (pix2pix format) or A/{phase}/ and B/{phase}/"
    )


class PairedImageFolder:
    """Aligned (input, target) pairs. Items: ``A`` (input) and ``B`` (target) tensors in [-1, 1]
    with identical crop and flip, plus ``A_path``/``B_path``. ``direction="BtoA"`` swaps the
    halves (facades: label map -> photo). Side-by-side files are split at half their width."""

    def __init__(
        self,
        root: str | Path,
        phase: str = "train",
        direction: str = "AtoB",
        load_size: int | None = None,
        crop_size: int = 256,
        flip: bool = True,
        train: bool | None = None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction '{direction}': choose one of {', '.join(DIRECTIONS)}")
        self.pairs = resolve_paired_files(root, phase)
        self.direction = direction
        self.train = phase == "train" if train is None else train
        load = default_load_size(crop_size) if load_size is None else load_size
        self.transform = (
            train_transform(load, crop_size, flip, paired=True)
            if self.train
            else eval_transform(crop_size, paired=True)
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_item(index, int(np.random.randint(0, 2**31 - 1)))

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (A, B) uint8 arrays of pair ``index``, before direction and augmentation."""
        first, second = self.pairs[index]
        if second is None:
            ab = load_rgb_array(first)
            w = ab.shape[1] // 2
            if w == 0:
                raise ValueError(f"{first}: too narrow to hold two side-by-side images")
            return ab[:, :w], ab[:, w : 2 * w]
        a, b = load_rgb_array(first), load_rgb_array(second)
        if a.shape != b.shape:
            raise ValueError(
                f"{first} and {second}: a pair must have the same size, got {a.shape} and {b.shape}"
            )
        return a, b

    def load_item(self, index: int, seed: int) -> dict[str, Any]:
        a, b = self.load_pair(index)
        first, second = self.pairs[index]
        path_a = path_b = str(first)
        if second is not None:
            path_b = str(second)
        if self.direction == "BtoA":
            a, b, path_a, path_b = b, a, path_b, path_a
        self.transform.set_random_seed(seed)
        out = self.transform(image=a, image_b=b)
        return {"A": out["image"], "B": out["image_b"], "A_path": path_a, "B_path": path_b}
