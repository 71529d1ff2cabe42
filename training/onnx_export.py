"""A net to one self-contained ONNX file, and the check that onnxruntime computes what torch does.

:func:`export_onnx` tries the dynamo exporter first, the TorchScript exporter if that fails;
:func:`check_parity` runs both on fresh random inputs at two sizes and refuses the file when they
differ by more than a tolerance. Tensor names come from ``models/card.py``.
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.card import IMAGE_INPUT, LABEL_INPUT, OUTPUT, STYLE_INPUTS, Z_INPUT

PARITY_COMPARED = "onnxruntime (CPU) vs torch (fp32, eval mode) on fresh random inputs"


class ExportError(RuntimeError):
    """Export refused; the message says what failed and with which numbers."""


# -- inputs --------------------------------------------------------------------------------------
def _style(spec) -> bool:
    return spec.task == "sample" and bool(getattr(spec, "style_layers", None))


def input_names(spec) -> list[str]:
    if _style(spec):
        return list(STYLE_INPUTS)
    return [Z_INPUT, LABEL_INPUT] if spec.task == "sample" else [IMAGE_INPUT]


def example_inputs(spec, batch: int = 1, size: tuple[int, int] | None = None, seed: int = 0) -> tuple:
    """Random inputs of the net's interface: ``image`` in the input range, or ``z`` + ``label`` (and
    for a style sampler ``psi``, ``z2``, ``mix_layer`` and ``blend``, each drawn over its whole range)."""
    g = torch.Generator().manual_seed(seed)
    if spec.task == "sample":
        z = torch.randn(batch, spec.latent_dim, generator=g)
        label = torch.randint(0, len(spec.classes), (batch,), generator=g, dtype=torch.int64)
        if not _style(spec):
            return z, label
        psi = torch.rand(batch, generator=g)
        z2 = torch.randn(batch, spec.latent_dim, generator=g)
        mix_layer = torch.randint(0, spec.style_layers + 1, (batch,), generator=g, dtype=torch.int64)
        blend = torch.rand(batch, generator=g)
        return z, label, psi, z2, mix_layer, blend
    h, w = size or (spec.native_size or 64, spec.native_size or 64)
    lo, hi = spec.input_range or (-1.0, 1.0)
    x = torch.rand(batch, spec.input_channels, h, w, generator=g) * (hi - lo) + lo
    return (x,)


def parity_shapes(spec) -> list[tuple[int, tuple[int, int] | None]]:
    """Two different (batch, size) cases: square, then non-square, both multiples of ``multiple_of``;
    for a translator that takes any size, both larger than its low-resolution copy."""
    if spec.task == "sample":
        return [(1, None), (5 if _style(spec) else 3, None)]
    m = max(int(spec.multiple_of or 1), 1)
    if m == 1 and spec.task == "translate" and spec.native_size:
        # a resolution-free translator: larger than the size its network sees, odd, and 4:3-ish
        n = int(spec.native_size)
        return [(1, (2 * n + 1, 2 * n + 1)), (2, (n + 37, 3 * n))]
    s = m * math.ceil(32 / m)
    return [(1, (s, s)), (2, (s + m, s + 2 * m))]


# -- ONNX export -----------------------------------------------------------------------------------
def _dynamic_shapes(spec):
    batch = torch.export.Dim.DYNAMIC
    if spec.task == "sample":
        return tuple({0: batch} for _ in input_names(spec))
    hw = torch.export.Dim.DYNAMIC
    return ({0: batch, 2: hw, 3: hw},)


def _dynamic_axes(spec) -> dict[str, dict[int, str]]:
    if spec.task == "sample":
        return {**{name: {0: "batch"} for name in input_names(spec)}, OUTPUT: {0: "batch"}}
    return {
        IMAGE_INPUT: {0: "batch", 2: "height", 3: "width"},
        OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
    }


def export_onnx(net, spec, path: str | Path, opset: int = 18, prefer_dynamo: bool = True) -> str:
    """Write ``net`` to ``path`` as one self-contained ONNX file; returns the exporter used."""
    path = Path(path)
    net = net.float().eval()
    args = example_inputs(spec, batch=2, size=parity_shapes(spec)[0][1])
    errors: list[str] = []
    exporters = ["dynamo", "torchscript"] if prefer_dynamo else ["torchscript"]
    for exporter in exporters:
        try:
            with warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    prog = torch.onnx.export(
                        net, args, None, dynamo=True, input_names=input_names(spec), output_names=[OUTPUT],
                        opset_version=opset, dynamic_shapes=_dynamic_shapes(spec), external_data=False,
                        verbose=False,
                    )  # fmt: skip
                    model = prog.model_proto
                else:
                    buf = io.BytesIO()
                    torch.onnx.export(
                        net, args, buf, dynamo=False, input_names=input_names(spec), output_names=[OUTPUT],
                        opset_version=opset, dynamic_axes=_dynamic_axes(spec), do_constant_folding=True,
                    )  # fmt: skip
                    model = onnx.load_from_string(buf.getvalue())
            onnx.checker.check_model(model)
            # one file: initialisers inline, never a sidecar .onnx.data
            onnx.save_model(model, str(path), save_as_external_data=False)
            return exporter
        except Exception as e:  # noqa: BLE001 - any exporter failure means: try the next one
            errors.append(
                f"{exporter}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            )
    raise ExportError("ONNX export failed with every exporter:\n  " + "\n  ".join(errors))


class _quiet:
    """Silence the exporters' progress prints on stdout (they are not errors)."""

    def __enter__(self):
        self._stdout = sys.stdout
        sys.stdout = io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._stdout
        return False


def ort_session(path: str | Path, threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_feed(spec, inputs: Sequence) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in zip(input_names(spec), inputs, strict=True)}


# -- parity ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParityResult:
    batch: int
    size: tuple[int, int] | None
    max_abs_err: float

    def describe(self) -> str:
        where = f"{self.size[0]}x{self.size[1]}" if self.size else "z/label"
        return f"batch {self.batch} @ {where}: max |ort - torch| = {self.max_abs_err:.2e}"


def check_parity(
    net, onnx_path: str | Path, spec, atol: float = 1e-4, seed: int = 1234
) -> list[ParityResult]:
    """Run torch (fp32, eval) and onnxruntime on fresh random inputs at two sizes; raise if they differ."""
    sess = ort_session(onnx_path)
    net = net.float().eval()
    results = []
    for i, (batch, size) in enumerate(parity_shapes(spec)):
        inputs = example_inputs(spec, batch=batch, size=size, seed=seed + i)
        with torch.inference_mode():
            ref = net(*inputs).float().numpy()
        got = sess.run([OUTPUT], ort_feed(spec, inputs))[0]
        if got.shape != ref.shape:
            raise ExportError(
                f"parity check failed: onnxruntime output shape {got.shape} != torch {ref.shape} "
                f"(batch {batch}, size {size}); dynamic axes are not right"
            )
        results.append(ParityResult(batch, size, float(np.abs(got - ref).max())))
    worst = max(r.max_abs_err for r in results)
    if not worst <= atol:  # also catches NaN
        raise ExportError(
            f"parity check failed: onnxruntime differs from torch by {worst:.3e} > {atol:.0e} "
            f"({'; '.join(r.describe() for r in results)}). The exported graph does not compute the "
            "trained net; do not ship it"
        )
    return results
