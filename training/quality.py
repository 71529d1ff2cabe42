"""PSNR and SSIM the way the super-resolution literature reports them, and the bicubic baseline.

Protocol (SRCNN / EDSR / BasicSR, so that our numbers sit next to published ones):

* the HR image is cropped to a multiple of ``scale`` (bottom/right) and the LR input is made from
  it by :func:`bicubic_downscale` — PIL's BICUBIC (a = -0.5, antialiased when shrinking, the same
  kernel as MATLAB's ``imresize``) on uint8 images, rounded back to uint8;
* the model output is rounded to uint8 like a saved PNG would be;
* both images go to the **Y channel** of YCbCr, ITU-R BT.601 on [0, 1] inputs:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (so Y is in [16, 235], on a 0..255 scale); Y is not
  rounded (as BasicSR's ``test_y_channel``);
* ``scale`` pixels are shaved from every border (upscalers cannot be judged there);
* PSNR = 10 log10(255^2 / MSE); SSIM is the standard Wang et al. (2004) index with an 11x11
  Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, population (not sample) covariances,
  averaged over the "valid" region: scikit-image's ``structural_similarity`` with those settings.

:func:`evaluate_upscaler` is the one code path for every method: the bicubic baseline
(:func:`bicubic_upscale`) and a trained network (:func:`torch_upscaler`) are both functions
``uint8 LR (H x W x 3) -> HR image`` handed to it, so their numbers are comparable by construction.
Published x4 Set5 anchors (Y-PSNR): bicubic 28.42 dB, FSRCNN 30.70, VDSR 31.35, EDSR 32.46.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import laplace
from skimage.metrics import structural_similarity

from training.data.images import list_images, load_rgb_array

Upscaler = Callable[[np.ndarray], np.ndarray]  # uint8 H x W x 3 LR -> H*s x W*s x 3 (uint8 or float [0,1])

SSIM_WINDOW = 11  # what scikit-image derives from sigma 1.5 and its truncation at 3.5 sigma
SSIM_SIGMA = 1.5


# ------------------------------------------------------------------------------------------------
# images: cropping, resampling, colour
# ------------------------------------------------------------------------------------------------
def as_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x C; float input is taken to be in [0, 1] and rounded like a saved PNG."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"expected uint8 or float images in [0, 1], got dtype {image.dtype}")
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Drop the bottom/right rows and columns so that H and W are multiples of ``scale``."""
    h, w = image.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"image of {h}x{w} px is smaller than the scale factor {scale}")
    return image[: h - h % scale, : w - w % scale]


def _resize_uint8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    image = as_uint8(image)
    squeeze = image.ndim == 2
    pil = Image.fromarray(image if squeeze else image[..., :3])
    out = np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC))
    return out if squeeze or out.ndim == 3 else out[..., None]


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """The LR input of the protocol: HR (cropped to a multiple of ``scale``) shrunk by PIL BICUBIC
    on uint8. Every LR image in this project (training pairs too) is made by this function."""
    hr = crop_to_multiple(as_uint8(hr), scale)
    h, w = hr.shape[:2]
    return _resize_uint8(hr, w // scale, h // scale)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline: LR enlarged by PIL BICUBIC on uint8 (uint8 out)."""
    h, w = lr.shape[:2]
    return _resize_uint8(lr, w * scale, h * scale)


def bicubic_upscaler(scale: int) -> Upscaler:
    """:func:`bicubic_upscale` as an :data:`Upscaler` for :func:`evaluate_upscaler`."""

    def upscale(lr: np.ndarray) -> np.ndarray:
        return bicubic_upscale(lr, scale)

    return upscale


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image (uint8, or float in [0, 1]) as float64 on the 0..255 scale
    (values in [16, 235]). Grey (H x W or H x W x 1) images are their own luma, scaled the same way."""
    image = np.asarray(image)
    x = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    if x.ndim == 2 or x.shape[-1] == 1:
        return 16.0 + 219.0 * x.reshape(x.shape[:2])
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def shave(image: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise ValueError(f"image of {image.shape[0]}x{image.shape[1]} px is too small to shave {border} px")
    return image[border:-border, border:-border]


# ------------------------------------------------------------------------------------------------
# the two metrics (on one channel, float64, 0..255 scale)
# ------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs images of the same shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two single-channel images (Wang et al. 2004, Gaussian 11/1.5)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"SSIM needs two 2-D images of the same shape, got {a.shape} and {b.shape}")
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {a.shape}")
    value = structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False
    )
    return float(value)


def sr_metrics(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
    """Y-channel PSNR/SSIM of one upscaled image against its HR original, ``scale`` px shaved.

    ``hr`` is cropped to a multiple of ``scale`` here; ``sr`` must then have the same size."""
    hr = crop_to_multiple(as_uint8(hr), scale)
    sr = as_uint8(sr)
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(
            f"upscaled image is {sr.shape[1]}x{sr.shape[0]} but the HR image (cropped to a multiple of "
            f"{scale}) is {hr.shape[1]}x{hr.shape[0]}; the upscaler must multiply the size by exactly {scale}"
        )
    y_sr, y_hr = shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale)
    return {
        "psnr_y": psnr(y_sr, y_hr),
        "ssim_y": ssim(y_sr, y_hr),
        "sharpness_y": sharpness_ratio(y_sr, y_hr),
    }


def sharpness_ratio(y: np.ndarray, y_ref: np.ndarray) -> float:
    """High-frequency energy of ``y`` relative to ``y_ref``: mean squared Laplacian, ratio.

    1.0 means as much fine detail as the original; bicubic x4 lands far below (blur), a GAN
    upscaler closer to 1 (above 1: more high frequencies than the original — noise or artefacts).
    It says nothing about whether the detail is right; read it next to PSNR/SSIM."""
    ref = float(np.mean(laplace(y_ref.astype(np.float64)) ** 2))
    return float(np.mean(laplace(y.astype(np.float64)) ** 2)) / max(ref, 1e-12)


# ------------------------------------------------------------------------------------------------
# evaluating an upscaler on a set of HR images
# ------------------------------------------------------------------------------------------------
@dataclass
class SRReport:
    """Per-image and mean metrics of one upscaler on one image set."""

    scale: int
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        if not self.per_image:
            return {}
        keys = next(iter(self.per_image.values())).keys()
        return {k: float(np.mean([m[k] for m in self.per_image.values()])) for k in keys}


def evaluate_upscaler(upscale: Upscaler, images: Iterable[str | Path] | str | Path, scale: int) -> SRReport:
    """Run ``upscale`` on the bicubic-downscaled version of every HR image and score it.

    ``images``: a folder (its images, as ``training.data.images.list_images`` finds them) or a list
    of files; images are read as RGB (grey/alpha/16-bit converted by ``load_rgb_array``). The same function serves the bicubic baseline
    (``bicubic_upscaler(scale)``) and a model (``torch_upscaler(net)``)."""
    paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    report = SRReport(scale=scale)
    for path in paths:
        hr = crop_to_multiple(load_rgb_array(path), scale)
        lr = bicubic_downscale(hr, scale)
        report.per_image[path.name] = sr_metrics(upscale(lr), hr, scale)
    return report


def torch_upscaler(net: Any, device: str = "cpu", value_range: tuple[float, float] = (0.0, 1.0)) -> Upscaler:
    """Wrap an upscaling ``nn.Module`` (N x 3 x h x w in ``value_range`` -> N x 3 x sh x sw) as an
    :data:`Upscaler`: uint8 in, uint8 out (rounded like a saved PNG)."""
    lo, hi = value_range

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(lr, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255.0)
        x = (x * (hi - lo) + lo).to(device)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                y = net(x)[0].float().cpu()
        finally:
            net.train(was_training)
        y = ((y - lo) / (hi - lo)).clamp(0, 1).permute(1, 2, 0).numpy()
        return as_uint8(y)

    return upscale
