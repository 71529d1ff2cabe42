"""albumentations pipelines: uint8 HWC image(s) in, float tensors in [-1, 1] out.

Training: resize to ``load_size`` (bicubic), random crop to ``crop_size``, random horizontal flip
(the CycleGAN/pix2pix "resize_and_crop"). Evaluation: a deterministic resize to ``crop_size`` with
no crop and no flip, so the model sees the scale it was trained on. Paired images go through one
call with ``image_b`` as an additional target, so both halves get the same crop and flip.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

cv2.setNumThreads(0)  # DataLoader workers already parallelise; OpenCV threads would oversubscribe

MEAN = (0.5, 0.5, 0.5)  # [0, 255] -> [-1, 1], the generators' tanh range
STD = (0.5, 0.5, 0.5)


def _finish() -> list[A.BasicTransform]:
    return [A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0), ToTensorV2()]


def train_transform(load_size: int, crop_size: int, flip: bool = True, paired: bool = False) -> A.Compose:
    if crop_size > load_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed load_size ({load_size})")
    steps: list[A.BasicTransform] = [
        A.Resize(load_size, load_size, interpolation=cv2.INTER_CUBIC),
        A.RandomCrop(crop_size, crop_size),
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps + _finish(), additional_targets={"image_b": "image"} if paired else None)


def eval_transform(crop_size: int, paired: bool = False) -> A.Compose:
    steps = [A.Resize(crop_size, crop_size, interpolation=cv2.INTER_CUBIC), *_finish()]
    return A.Compose(steps, additional_targets={"image_b": "image"} if paired else None)


def default_load_size(crop_size: int) -> int:
    """The reference's 286 for a 256 crop (~12% margin for the random crop), scaled to other crops."""
    return round(crop_size * 286 / 256)
