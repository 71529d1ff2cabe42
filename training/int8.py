"""INT8 static quantisation of an exported ONNX file, and the timing that compares it with fp32.

The graph is first rewritten exactly by :mod:`training.int8_graph`, then quantised by onnxruntime
(QDQ, calibrated on real training inputs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.registry import QDQRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.card import OUTPUT
from training.int8_graph import subpixel_conv_transpose, widen_thin_convs
from training.onnx_export import ExportError, ort_session

CALIBRATION_IMAGES = 32  # training inputs that calibrate the activation ranges


class _ListReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, calibration: list[dict[str, np.ndarray]]
) -> None:
    """Static INT8 (QDQ, per-channel weights, uint8 activations) calibrated on ``calibration`` feeds.

    The graph is first rewritten, exactly, into ops with fast onnxruntime int8 kernels
    (``training.int8_graph``: stride-2 ConvTranspose -> phase Convs, thin convs widened). A
    ConvTranspose left over stays fp32: the CPU provider has no int8 kernel for it, and quantising it
    would only add a DequantizeLinear of its weights to every run.
    """
    if not calibration:
        raise ExportError(
            "INT8 quantisation needs calibration inputs (real training images); none were given"
        )
    reader = _ListReader(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
            shutil.copyfile(fp32_path, pre)
        model = onnx.load(str(pre))
        if subpixel_conv_transpose(model) + widen_thin_convs(model):
            onnx.save_model(model, str(pre), save_as_external_data=False)
        logging.disable(logging.WARNING)  # the quantiser logs a warning per bias tensor
        try:
            quantize_static(
                str(pre), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                # the QDQ ops, less ConvTranspose (see above); the quantiser's default (these plus
                # the QOperator-format ops: Concat, Add, ...) ran the CycleGAN ~20 % slower, side by side
                op_types_to_quantize=sorted(set(QDQRegistry) - {"ConvTranspose"}),
            )  # fmt: skip
        finally:
            logging.disable(logging.NOTSET)


def time_sessions(paths: Sequence[str | Path], feed: dict[str, np.ndarray], repeats: int = 9) -> list[float]:
    """Median seconds per run of each model, one thread, runs interleaved (after one warm-up each).

    Interleaving makes the ratio fair when the machine's load changes during the measurement.
    """
    sessions = [ort_session(p) for p in paths]
    for sess in sessions:
        sess.run([OUTPUT], feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for sess, ts in zip(sessions, times, strict=True):
            t = time.perf_counter()
            sess.run([OUTPUT], feed)
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]
