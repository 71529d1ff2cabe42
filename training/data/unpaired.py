"""Unpaired two-domain images for CycleGAN: ``trainA/ trainB/ testA/ testB/`` or any two folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data.images import EmptyFolderError, holdout_split, list_images, load_rgb_array
from training.data.transforms import default_load_size, eval_transform, train_transform


def resolve_unpaired_files(
    root: str | Path | None,
    phase: str = "train",
    a_dir: str | Path | None = None,
    b_dir: str | Path | None = None,
    holdout_every: int = 10,
) -> tuple[list[Path], list[Path]]:
    """The A and B files of ``phase`` ("train" or "test").

    * ``a_dir``/``b_dir`` (relative to ``root`` unless absolute): two folders without a split, e.g.
      ``monet_jpg/`` and ``photo_jpg/``; :func:`holdout_split` with ``holdout_every`` picks the
      phase (``holdout_every=0``: use every file, for folders that are already a split);
    * otherwise the CycleGAN layout ``root/<phase>A`` and ``root/<phase>B``.
    """
    if phase not in {"train", "test"}:
        raise ValueError(f"phase must be 'train' or 'test', got '{phase}'")
    if (a_dir is None) != (b_dir is None):
        raise ValueError(
            "give both --a-dir and --b-dir, or neither (then DATA/trainA and DATA/trainB are used)"
        )
    if a_dir is not None and b_dir is not None:
        base = Path(root) if root else Path(".")
        dirs = [Path(a_dir) if Path(a_dir).is_absolute() else base / a_dir,
                Path(b_dir) if Path(b_dir).is_absolute() else base / b_dir]  # fmt: skip
        out = []
        for d in dirs:
            train, test = holdout_split(list_images(d), holdout_every)
            files = train if phase == "train" else test
            if not files:
                raise EmptyFolderError(f"{d}: the {phase} split is empty (holdout every {holdout_every})")
            out.append(files)
        return out[0], out[1]
    if root is None:
        raise ValueError("no dataset: pass --data DIR (with trainA/ trainB/) or --a-dir/--b-dir")
    root = Path(root)
    a, b = root / f"{phase}A", root / f"{phase}B"
    if not a.is_dir() or not b.is_dir():
        raise EmptyFolderError(
            f"{root}: expected the CycleGAN layout {phase}A/ and {phase}B/; for two folders without "
            "a split (e.g. monet_jpg/ photo_jpg/) pass --a-dir and --b-dir"
        )
    return list_images(a), list_images(b)


class UnpairedImageFolder:
    """Images of domain A and domain B, paired at random (CycleGAN's ``unaligned`` dataset).

    Item ``i`` is A file ``i % len(A)`` with a B file drawn at random (training) or ``i % len(B)``
    (evaluation); the length is ``max(len(A), len(B))``. Each item is a dict with ``A`` and ``B``
    (float tensors 3 x crop x crop in [-1, 1]) and ``A_path``/``B_path``. ``load_item(i, seed)``
    takes all randomness (B choice, crops, flips) from ``seed`` for exactly resumable training.
    """

    def __init__(
        self,
        root: str | Path | None,
        phase: str = "train",
        load_size: int | None = None,
        crop_size: int = 256,
        flip: bool = True,
        train: bool | None = None,
        a_dir: str | Path | None = None,
        b_dir: str | Path | None = None,
        holdout_every: int = 10,
    ) -> None:
        self.files_a, self.files_b = resolve_unpaired_files(root, phase, a_dir, b_dir, holdout_every)
        self.train = phase == "train" if train is None else train
        load = default_load_size(crop_size) if load_size is None else load_size
        self.transform = train_transform(load, crop_size, flip) if self.train else eval_transform(crop_size)

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_item(index, int(np.random.randint(0, 2**31 - 1)))

    def load_item(self, index: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        path_a = self.files_a[index % len(self.files_a)]
        j = int(rng.integers(len(self.files_b))) if self.train else index % len(self.files_b)
        path_b = self.files_b[j]
        seed_a, seed_b = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
        return {
            "A": self._apply(path_a, seed_a),
            "B": self._apply(path_b, seed_b),
            "A_path": str(path_a),
            "B_path": str(path_b),
        }

    def _apply(self, path: Path, seed: int):
        # Crops and flips of A and B are independent: the domains are unpaired.
        self.transform.set_random_seed(seed)
        return self.transform(image=load_rgb_array(path))["image"]


class ImageFiles:
    """One list of image files through the evaluation transform: items ``{"image", "path"}``."""

    def __init__(self, files: list[Path], crop_size: int) -> None:
        if not files:
            raise EmptyFolderError("no image files given")
        self.files, self.transform = list(files), eval_transform(crop_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        return {"image": self.transform(image=load_rgb_array(path))["image"], "path": str(path)}
