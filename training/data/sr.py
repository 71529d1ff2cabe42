"""Super-resolution training pairs made from any folder of HR images.

Each item: a random ``lr_patch * scale`` HR crop (random flips and 90-degree rotations), and its
LR version made **in code** by :func:`training.quality.bicubic_downscale` — PIL BICUBIC on uint8,
the same function the evaluation protocol uses, so training and test inputs come from one
degradation. The ``realworld`` option adds Real-ESRGAN-style degradations to the LR patch
(Gaussian blur, Gaussian noise, JPEG) with albumentations; the HR target stays clean.

All randomness of an item is drawn from the seed the training loop hands to
:meth:`SRPatches.load_item`, so a resumed run sees exactly the same pairs. Tensors are float
3 x h x w in [0, 1] (the SR networks' range).
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from training.data.images import list_images, load_rgb_array
from training.quality import bicubic_downscale, bicubic_upscale, crop_to_multiple


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 H x W x 3 -> float 3 x H x W in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` square crop; images smaller than that are reflect-padded first (T91 has 78 px images)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top : top + size, left : left + size]


def random_dihedral(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations, uniformly (the usual SR augmentation)."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.rot90(image, k=int(rng.integers(0, 4)))


def realworld_degradation(strength: float = 1.0):
    """albumentations pipeline for the LR patch: blur, noise, JPEG (each applied with p=0.5..0.7)."""
    s = max(0.0, float(strength))
    return A.Compose(
        [
            A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.2, 0.2 + 1.3 * s), p=0.5),
            A.GaussNoise(std_range=(0.0, 0.04 * s), p=0.5),
            A.ImageCompression(quality_range=(max(30, int(95 - 55 * s)), 95), p=0.7),
        ],
        seed=0,
    )


class SRPatches(torch.utils.data.Dataset):
    """Random (LR, HR) patch pairs from the images in ``folder`` (held decoded in memory).

    ``len`` is the number of images; the loop's stream draws an image per item and a fresh crop
    from the item's seed, so "epochs" are passes over images with new crops each time."""

    def __init__(
        self,
        folder: str | Path,
        scale: int = 4,
        lr_patch: int = 32,
        realworld: bool = False,
        degradation_strength: float = 1.0,
    ) -> None:
        self.paths = list_images(folder)
        self.images = [load_rgb_array(p) for p in self.paths]
        self.scale, self.lr_patch, self.hr_patch = scale, lr_patch, lr_patch * scale
        self.degrade = realworld_degradation(degradation_strength) if realworld else None

    def __len__(self) -> int:
        return len(self.images)

    def make_pair(self, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        hr = np.ascontiguousarray(random_dihedral(random_crop(hr, self.hr_patch, rng), rng))
        lr = bicubic_downscale(hr, self.scale)
        if self.degrade is not None:
            self.degrade.set_random_seed(int(rng.integers(0, 2**31 - 1)))
            lr = self.degrade(image=lr)["image"]
        return lr, hr

    def load_item(self, index: int, seed: int) -> tuple[Tensor, Tensor]:
        lr, hr = self.make_pair(self.images[index], np.random.default_rng(seed))
        return to_tensor(lr), to_tensor(hr)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.load_item(index, index)  # deterministic per index when used outside the loop


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def preview_pairs(
    folder: str | Path, scale: int, hr_size: int, count: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed (LR, bicubic, HR) centre crops of the first ``count`` images for sample grids:
    each 3 x S x S float in [0, 1]; LR is 3 x S/scale x S/scale."""
    lrs, bics, hrs = [], [], []
    for path in list_images(folder)[:count]:
        hr = load_rgb_array(path)
        size = min(hr_size, *hr.shape[:2]) // scale * scale
        hr = crop_to_multiple(center_crop(hr, size), scale)
        if hr.shape[0] != hr_size:  # keep the grid rectangular: small images are enlarged
            hr = np.asarray(Image.fromarray(hr).resize((hr_size, hr_size), Image.Resampling.BICUBIC))
        lr = bicubic_downscale(hr, scale)
        lrs.append(to_tensor(lr))
        bics.append(to_tensor(bicubic_upscale(lr, scale)))
        hrs.append(to_tensor(hr))
    return torch.stack(lrs), torch.stack(bics), torch.stack(hrs)
