"""What exporting a net needs besides the net, per task: the sample grid, the INT8 calibration
inputs and the INT8 headline metric measured on an ONNX file (``ExportIO``), made from a recipe's
own data by :func:`translation_export_io`, :func:`upscale_export_io` or :func:`sample_export_io`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import IMAGE_INPUT, LABEL_INPUT, OUTPUT, Z_INPUT
from training import evaluate as ev
from training.data.images import list_images, load_rgb_array
from training.data.sr import center_crop
from training.fid import tensor_to_uint8_images
from training.int8 import CALIBRATION_IMAGES
from training.onnx_export import ExportError, ort_session
from training.quality import bicubic_downscale, evaluate_upscaler


def _image_batches_to_feeds(batches, limit: int) -> list[dict[str, np.ndarray]]:
    feeds = []
    for x in batches:
        for i in range(len(x)):
            if len(feeds) >= limit:
                return feeds
            feeds.append({IMAGE_INPUT: x[i : i + 1].float().numpy()})
    return feeds


@dataclass
class ExportIO:
    """What exporting one net needs beyond the net, from its recipe's ``export_io``: the sample grid
    (rows of uint8 images), INT8 calibration feeds and the INT8 headline metric of an ONNX file on
    the test split. ``None``: not available (no grid; ``--int8`` is refused)."""

    grid: Callable[[], list[list[np.ndarray]]] | None = None
    calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None
    metric: Callable[[Path], float] | None = None
    higher_is_better: bool = False


@dataclass(frozen=True)
class IOOptions:
    """The export options a recipe's ``export_io`` reads."""

    data: str | None = None  # --data
    judge: str | None = None  # --judge
    calibration_images: int = CALIBRATION_IMAGES
    int8_images: int | None = None  # test images for the INT8 metric (None: all)


def translation_export_io(net, spec, data, options: IOOptions) -> ExportIO:
    """Grid, calibration and INT8 FID of a translate net from its recipe's own splits ``data``
    (a :class:`training.evaluate.TranslationData`)."""
    opts = ev.EvalOptions(limit=options.int8_images, batch_size=4)

    def grid():
        x = next(iter(data.test_inputs(4, 4)))[0]
        y = ev.torch_fn(net)(x)
        xs = tensor_to_uint8_images(x, spec.input_range)
        ys = tensor_to_uint8_images(y, spec.output_range)
        return [[a, b] for a, b in zip(xs, ys, strict=True)]

    def calibration():
        n = options.calibration_images
        return _image_batches_to_feeds(data.train_inputs(n, 4), n)

    cache: dict[str, Any] = {}

    def metric(path: Path) -> float:
        if "target" not in cache:
            cache["target"] = ev.features_of(data.test_targets(opts.limit, opts.batch_size))
        return ev.translation_fid(ev.onnx_fn(path), data, opts, cache["target"])

    return ExportIO(grid, calibration, metric, higher_is_better=False)


def upscale_export_io(net, spec, hr_dir: str | Path, train_dir: str | Path, options: IOOptions) -> ExportIO:
    """Grid and INT8 PSNR of an upscaler on the HR test images of ``hr_dir``; calibration on LR
    crops of the training images of ``train_dir``."""

    def grid():
        files = list_images(hr_dir)[:3]
        return ev.sr_grid(net, spec, files, ev.EvalOptions())

    def calibration():
        hr_size = int(spec.native_size) * int(spec.scale)
        lo, hi = spec.input_range
        feeds = []
        for f in list_images(train_dir)[: options.calibration_images]:
            hr = load_rgb_array(f)
            if min(hr.shape[:2]) < hr_size:
                continue
            lr = bicubic_downscale(center_crop(hr, hr_size), int(spec.scale)).astype(np.float32) / 255.0
            feeds.append({IMAGE_INPUT: (lr.transpose(2, 0, 1)[None] * (hi - lo) + lo).astype(np.float32)})
        return feeds

    def metric(path: Path) -> float:
        files = list_images(hr_dir)[: options.int8_images]
        up = ev.upscaler_from_fn(ev.onnx_fn(path), spec.input_range)
        return evaluate_upscaler(up, files, int(spec.scale)).mean["psnr_y"]

    return ExportIO(grid, calibration, metric, higher_is_better=True)


def sample_export_io(
    net, spec, judge: Callable[[], tuple[Any, int | None]] | None, options: IOOptions
) -> ExportIO:
    """Grid, calibration noise and INT8 judge accuracy of a class-conditional sampler; ``judge()``
    loads the classifier and its input size (None: the metric is refused with a message)."""

    def grid():
        images, labels = ev.generate_samples(ev.torch_sample_fn(net), len(spec.classes), spec.latent_dim, 8)
        imgs = tensor_to_uint8_images(images, spec.output_range)
        return [[imgs[i] for i in np.flatnonzero(labels.numpy() == c)] for c in range(len(spec.classes))]

    def calibration():
        g = np.random.default_rng(0)
        return [
            {Z_INPUT: g.standard_normal((8, spec.latent_dim)).astype(np.float32),
             LABEL_INPUT: (np.arange(8) % len(spec.classes)).astype(np.int64)}
            for _ in range(max(1, options.calibration_images // 8))
        ]  # fmt: skip

    def metric(path: Path) -> float:
        if judge is None:
            raise ExportError(
                "--int8 for a sample model needs --judge RUN (a classifier run) to measure accuracy"
            )
        judge_net, judge_size = judge()
        sess = ort_session(path)

        def fn(z, label):
            return torch.from_numpy(sess.run([OUTPUT], {Z_INPUT: z.numpy(), LABEL_INPUT: label.numpy()})[0])

        return ev.sample_judge_accuracy(fn, spec, judge_net, judge_size, max(8, options.int8_images or 0))

    return ExportIO(grid, calibration, metric, higher_is_better=True)
