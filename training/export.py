"""Export a training run to the model zoo: ONNX + parity check (+ INT8) + card.json, written atomically.

``transfigure export RUN --name NAME [--net G_AB] [--out models/] [--eval RUN/eval/x.json] [--int8]``
``transfigure export models/NAME --onnx FP32.onnx --name NAME --int8`` (re-export a zoo model, e.g. with
a newer quantiser, when its training run is gone: the net is rebuilt from the card and the fp32 file)

1. rebuild the net from ``RUN/checkpoints/last.pt`` (EMA weights when present, eval mode, fp32);
2. export to ONNX (opset ``ExportOptions.opset``): the dynamo exporter first, the TorchScript exporter
   if that fails (the card's ``training.recipe_config["onnx_exporter"]`` says which); dynamic batch,
   and dynamic H/W for translate/upscale; tensor names from ``models/card.py``; one self-contained
   file (no ``.onnx.data``);
3. **parity**: onnxruntime vs torch on fresh random inputs at two different sizes; the export fails
   with the numbers if the max abs error exceeds ``atol`` (in output units);
4. optional INT8 static quantisation (QDQ, calibrated on real training images) kept only when its
   headline metric on the test split loses at most ``--int8-max-loss`` (relative) against fp32;
5. card (validated before anything is written) with the parity check, the INT8 gate and the quality
   bar (``--quality-bar``) as typed records, sample grid PNG; ``models/NAME/`` is built in a
   temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.card import (
    CARD_FILE,
    IMAGE_INPUT,
    LABEL_INPUT,
    OUTPUT,
    Z_INPUT,
    Int8Gate,
    ModelCard,
    QualityBar,
    relative_loss,
    sha256_file,
)

GRID_FILE = "samples.png"
GRID_MAX_BYTES = 300_000
PARITY_COMPARED = "onnxruntime (CPU) vs torch (fp32, eval mode) on fresh random inputs"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ExportError(RuntimeError):
    """Export refused; the message says what failed and with which numbers."""


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 18  # >= 17 (LayerNorm, GridSample ...); 18 is the dynamo exporter's native opset
    atol: float = 1e-4  # parity: max |onnxruntime - torch| in output units (range [-1, 1] or [0, 1])
    parity_seed: int = 1234
    int8: bool = False
    int8_max_loss: float = 0.03  # keep int8 only if the headline metric loses at most 3 % (relative)
    calibration_images: int = 32
    prefer_dynamo: bool = True


# -- inputs --------------------------------------------------------------------------------------
def input_names(spec) -> list[str]:
    return [Z_INPUT, LABEL_INPUT] if spec.task == "sample" else [IMAGE_INPUT]


def example_inputs(spec, batch: int = 1, size: tuple[int, int] | None = None, seed: int = 0) -> tuple:
    """Random inputs of the net's interface: ``image`` in the input range, or ``z`` + ``label``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if spec.task == "sample":
        z = torch.randn(batch, spec.latent_dim, generator=g)
        label = torch.randint(0, len(spec.classes), (batch,), generator=g, dtype=torch.int64)
        return z, label
    h, w = size or (spec.native_size or 64, spec.native_size or 64)
    lo, hi = spec.input_range or (-1.0, 1.0)
    x = torch.rand(batch, spec.input_channels, h, w, generator=g) * (hi - lo) + lo
    return (x,)


def parity_shapes(spec) -> list[tuple[int, tuple[int, int] | None]]:
    """Two different (batch, size) cases: square, then non-square, both multiples of ``multiple_of``;
    for a translator that takes any size, both larger than its low-resolution copy."""
    if spec.task == "sample":
        return [(1, None), (3, None)]
    m = max(int(spec.multiple_of or 1), 1)
    if m == 1 and spec.task == "translate" and spec.native_size:
        # a resolution-free translator: larger than the size its network sees, odd, and 4:3-ish
        n = int(spec.native_size)
        return [(1, (2 * n + 1, 2 * n + 1)), (2, (n + 37, 3 * n))]
    s = m * math.ceil(32 / m)
    return [(1, (s, s)), (2, (s + m, s + 2 * m))]


# -- ONNX export -----------------------------------------------------------------------------------
def _dynamic_shapes(spec):
    import torch

    batch = torch.export.Dim.DYNAMIC
    if spec.task == "sample":
        return ({0: batch}, {0: batch})
    hw = torch.export.Dim.DYNAMIC
    return ({0: batch, 2: hw, 3: hw},)


def _dynamic_axes(spec) -> dict[str, dict[int, str]]:
    if spec.task == "sample":
        return {Z_INPUT: {0: "batch"}, LABEL_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
    return {
        IMAGE_INPUT: {0: "batch", 2: "height", 3: "width"},
        OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
    }


def export_onnx(net, spec, path: str | Path, opset: int = 18, prefer_dynamo: bool = True) -> str:
    """Write ``net`` to ``path`` as one self-contained ONNX file; returns the exporter used."""
    import onnx
    import torch

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
    import onnxruntime as ort

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
    import torch

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


# -- INT8 ------------------------------------------------------------------------------------------
class _ListReader:
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
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.int8_graph import subpixel_conv_transpose, widen_thin_convs

    if not calibration:
        raise ExportError(
            "INT8 quantisation needs calibration inputs (real training images); none were given"
        )
    reader = type("Reader", (_ListReader, CalibrationDataReader), {})(calibration)
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


# -- sizes, provenance -----------------------------------------------------------------------------
def macs_256(net, spec) -> int:
    """Real MACs for one 256x256 input (translate/upscale) or one sample (sample models)."""
    from training.macs import count_macs

    if spec.task == "sample":
        return count_macs(net, *example_inputs(spec, batch=2), per_sample=True)
    return count_macs(net, *example_inputs(spec, batch=1, size=(256, 256)))


def git_commit(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def architecture_name(net) -> str:
    from training.macs import count_parameters

    return f"{type(net).__name__} ({count_parameters(net) / 1e6:.2f} M parameters)"


# -- eval report -> card metrics ----------------------------------------------------------------
def metrics_from_eval(
    report: dict[str, Any], net_name: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The eval JSON's metrics that belong to ``net_name`` (or to no particular net), card-shaped."""
    keep = []
    for m in report.get("metrics", []):
        if m.get("net") not in (None, net_name):
            continue
        keep.append({k: m[k] for k in ("name", "value", "split", "protocol", "command")})
    headline = report.get("headline", {})
    head = headline.get(net_name) if isinstance(headline, dict) else headline
    if head not in {m["name"] for m in keep}:
        head = None
    return keep, head


# -- card and folder -------------------------------------------------------------------------------
def card_dict(
    *,
    name: str,
    spec,
    net,
    sha256: str,
    opset: int,
    precision: str,
    training: dict[str, Any],
    metrics: list[dict[str, Any]],
    headline: str | None,
    notes: str,
    parity: dict[str, Any] | None = None,
    int8_gate: dict[str, Any] | None = None,
    quality_bar: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card as a plain dict (validated by the caller through ModelCard)."""
    from training.macs import count_parameters

    card: dict[str, Any] = {
        "name": name,
        "task": spec.task,
        "method": spec.method,
        "description": spec.description,
        "architecture": architecture_name(net),
        "parameters": count_parameters(net),
        "macs_256": macs_256(net, spec),
        "sha256": sha256,
        "opset": opset,
        "precision": precision,
        "output": {"channels": spec.output_channels, "range": list(spec.output_range)},
        "training": training,
        "metrics": metrics,
        "headline_metric": headline,
        "parity": parity,
        "int8_gate": int8_gate,
        "quality_bar": quality_bar,
        "notes": notes,
    }
    if spec.task in {"translate", "upscale"}:
        card["input"] = {
            "channels": spec.input_channels,
            "range": list(spec.input_range or (-1.0, 1.0)),
            "multiple_of": int(spec.multiple_of or 1),
            "native_size": int(spec.native_size or 256),
        }
    if spec.task == "upscale":
        card["scale"] = spec.scale
    if spec.task == "sample":
        card.update(classes=list(spec.classes), latent_dim=spec.latent_dim, output_size=spec.output_size)
    return card


def write_model_folder(
    out_root: str | Path, name: str, card: ModelCard, files: dict[str, Path | bytes]
) -> Path:
    """Write ``out_root/name/`` atomically: build it in a temp folder beside it, check it, rename it in."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the zoo is read by the service, maybe as another user
    try:
        for fname, content in files.items():
            target = tmp / fname
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        card.save(tmp)
        ModelCard.load(tmp / CARD_FILE).verify_file(tmp)  # what the service will check, before it is live
        old = None
        if final.exists():
            old = out_root / f".{name}.old-{time.time_ns()}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- sample grids ----------------------------------------------------------------------------------
def grid_png(rows: Sequence[Sequence[np.ndarray]], max_bytes: int = GRID_MAX_BYTES, cell: int = 128) -> bytes:
    """A PNG of rows of uint8 images (H x W x C or H x W), each cell resized to ``cell`` px high;
    shrunk until it fits in ``max_bytes``."""
    from PIL import Image

    while True:
        tiles = [[_cell(im, cell) for im in row] for row in rows]
        width = max(sum(t.width for t in row) + 2 * (len(row) - 1) for row in tiles)
        height = sum(row[0].height for row in tiles) + 2 * (len(tiles) - 1)
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        y = 0
        for row in tiles:
            x = 0
            for t in row:
                canvas.paste(t, (x, y))
                x += t.width + 2
            y += row[0].height + 2
        buf = io.BytesIO()
        canvas.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or cell <= 16:
            return buf.getvalue()
        cell = int(cell * 0.75)


def _cell(im: np.ndarray, cell: int):
    from PIL import Image

    a = np.asarray(im)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    img = Image.fromarray(a).convert("RGB")
    w = max(1, round(img.width * cell / img.height))
    return img.resize((w, cell), Image.Resampling.BICUBIC if img.height > cell else Image.Resampling.NEAREST)


def tensor_to_uint8_images(x, value_range: tuple[float, float]) -> list[np.ndarray]:
    """N x C x H x W float tensor in ``value_range`` -> list of H x W x C uint8 arrays."""
    from training.fid import to_uint8

    return [a for a in to_uint8(x, value_range).permute(0, 2, 3, 1).cpu().numpy()]


# -- the whole export ------------------------------------------------------------------------------
@dataclass
class ExportResult:
    folder: Path
    card: ModelCard
    exporter: str
    parity: list[ParityResult]

    @property
    def int8(self) -> Int8Gate | None:
        """The INT8 gate's record when INT8 was tried."""
        return self.card.int8_gate


def export_net(
    net,
    spec,
    *,
    name: str,
    out_root: str | Path,
    training: dict[str, Any],
    metrics: list[dict[str, Any]] | None = None,
    headline: str | None = None,
    grid_rows: Sequence[Sequence[np.ndarray]] | None = None,
    options: ExportOptions = ExportOptions(),
    calibration: list[dict[str, np.ndarray]] | None = None,
    int8_metric: Callable[[Path], float] | None = None,
    int8_higher_is_better: bool = False,
    notes: str = "",
    command: str | None = None,
    quality_bar: QualityBar | dict[str, Any] | None = None,
    weights: str = "trained",
) -> ExportResult:
    """Export one net (any nn.Module with ``spec``'s interface) into ``out_root/name``.

    ``training`` is the card's TrainingInfo (``recipe_config`` gets the exporter recorded);
    ``int8_metric(onnx_path) -> value`` measures the headline metric with an ONNX model on the test
    split (used only with ``options.int8``). ``quality_bar`` is the verdict recorded on the card;
    ``weights`` says where the net's weights came from (the card's ``parity.weights``).
    """
    if options.opset < 17:
        raise ExportError(f"opset {options.opset} is too old: use 17 or newer")
    metrics = list(metrics or [])
    int8_gate: dict[str, Any] | None = None
    if isinstance(quality_bar, QualityBar):
        quality_bar = quality_bar.model_dump(mode="json")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        exporter = export_onnx(net, spec, fp32, opset=options.opset, prefer_dynamo=options.prefer_dynamo)
        parity = check_parity(net, fp32, spec, atol=options.atol, seed=options.parity_seed)
        chosen, precision = fp32, "fp32"
        if options.int8:
            int8 = Path(tmp) / "model.int8.onnx"
            chosen, precision, int8_gate = _try_int8(
                fp32,
                int8,
                spec,
                calibration or [],
                int8_metric,
                int8_higher_is_better,
                options,
                command or " ".join(sys.argv),
                headline,
            )
        training = dict(training)
        training["recipe_config"] = dict(training.get("recipe_config", {}), onnx_exporter=exporter)
        parity_record = {
            "compared": PARITY_COMPARED,
            "weights": weights,
            "exporter": exporter,
            "tolerance": options.atol,
            "cases": [
                {"batch": r.batch, "size": list(r.size) if r.size else None, "max_abs_err": r.max_abs_err}
                for r in parity
            ],
        }
        data = card_dict(
            name=name, spec=spec, net=net, sha256=sha256_file(chosen), opset=options.opset,
            precision=precision, training=training, metrics=metrics, headline=headline, notes=notes,
            parity=parity_record, int8_gate=int8_gate, quality_bar=quality_bar,
        )  # fmt: skip
        card = ModelCard.from_dict(data, source=f"card for '{name}'")  # validated before writing anything
        files: dict[str, Path | bytes] = {card.onnx_file: chosen}
        if grid_rows:
            files[GRID_FILE] = grid_png(grid_rows)
        folder = write_model_folder(out_root, name, card, files)
    return ExportResult(folder=folder, card=card, exporter=exporter, parity=parity)


def _try_int8(fp32, int8, spec, calibration, metric, higher_is_better, options, command, headline):
    """Quantise, measure the headline metric on both files, time them; the chosen file, its
    precision and the card's ``int8_gate`` record."""
    if metric is None:
        raise ExportError("--int8 needs a way to measure the headline metric on the test split")
    quantize_int8(fp32, int8, calibration)
    v32, v8 = float(metric(fp32)), float(metric(int8))
    t32, t8 = time_sessions([fp32, int8], calibration[0])
    gate = {
        "metric": headline or "headline",
        "higher_is_better": bool(higher_is_better),
        "fp32": v32,
        "int8": v8,
        "threshold": options.int8_max_loss,
        "speedup": t32 / max(t8, 1e-12),
        "calibration_inputs": len(calibration),
        "command": command,
    }
    keep = relative_loss(v32, v8, higher_is_better) <= options.int8_max_loss
    gate["shipped"] = "int8" if keep else "fp32"
    return (int8, "int8", gate) if keep else (fp32, "fp32", gate)


def config_dict(config) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return dict(config)


# -- from a training run -----------------------------------------------------------------------------
def training_info(loaded, spec, net_name: str) -> dict[str, Any]:
    """The card's TrainingInfo: provenance from training/data/catalog.py, the run's config and history."""
    from training.data.catalog import UNKNOWN_LICENSE, provenance

    data_path = getattr(loaded.config, "data", "") or spec.dataset.get("path", "")
    prov = provenance(data_path) if data_path else None
    ds = spec.dataset or {}
    if prov is not None and prov.license != UNKNOWN_LICENSE:
        name, source, license_ = prov.name, prov.source, prov.license  # a known dataset: its terms
    else:
        name = ds.get("name") or (prov.name if prov else "unknown")
        source = ds.get("source") or (prov.source if prov else "unknown")
        license_ = ds.get("license") or UNKNOWN_LICENSE
    recipe_config = {
        "recipe": loaded.recipe,
        "net": net_name,
        "config": config_dict(loaded.config),
        "checkpoint": str(loaded.checkpoint),
        "ema_weights": loaded.used_ema,
    }
    if ds.get("split"):
        recipe_config["split"] = ds["split"]
    return {
        "dataset": name,
        "source": source,
        "license": license_,
        "split_sizes": {str(k): int(v) for k, v in (ds.get("split_sizes") or {}).items()},
        "recipe_config": recipe_config,
        "steps": int(loaded.step),
        "wall_time_s": float(loaded.wall_time_s),
        "hardware": loaded.hardware,
        "commit": git_commit(),
    }


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
    calibration_images: int = ExportOptions.calibration_images
    int8_images: int | None = None  # test images for the INT8 metric (None: all)


def translation_export_io(net, spec, data, options: IOOptions) -> ExportIO:
    """Grid, calibration and INT8 FID of a translate net from its recipe's own splits ``data``
    (a :class:`training.evaluate.TranslationData`)."""
    from training import evaluate as ev

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
    from training import evaluate as ev
    from training.data.images import list_images
    from training.quality import bicubic_downscale, evaluate_upscaler

    def grid():
        files = list_images(hr_dir)[:3]
        return ev._sr_grid(net, spec, files, ev.EvalOptions())

    def calibration():
        from training.data.images import load_rgb_array as load_rgb
        from training.data.sr import center_crop

        hr_size = int(spec.native_size) * int(spec.scale)
        lo, hi = spec.input_range
        feeds = []
        for f in list_images(train_dir)[: options.calibration_images]:
            hr = load_rgb(f)
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
    from training import evaluate as ev

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
            import torch

            return torch.from_numpy(sess.run([OUTPUT], {Z_INPUT: z.numpy(), LABEL_INPUT: label.numpy()})[0])

        return ev.sample_judge_accuracy(fn, spec, judge_net, judge_size, max(8, options.int8_images or 0))

    return ExportIO(grid, calibration, metric, higher_is_better=True)


def _source_card(run: str | Path) -> ModelCard | None:
    """The card when ``run`` is a zoo model folder (re-export without the training run), else None."""
    card_path = Path(run) / CARD_FILE
    return ModelCard.load(card_path) if card_path.is_file() else None


def export_run(args: argparse.Namespace) -> ExportResult:
    from training.evaluate import command_line
    from training.recipes import load_run, load_run_from_card, recipe_module, with_data

    card = _source_card(args.run)
    if card is None and getattr(args, "dequantize", False):
        raise ExportError(f"{args.run}: --dequantize needs a zoo model folder (with {CARD_FILE}), not a run")
    if card is not None:
        dequantize = bool(getattr(args, "dequantize", False))
        loaded = load_run_from_card(args.run, getattr(args, "onnx", None), dequantize=dequantize)
        args.net = args.net or next(iter(loaded.generators))
    else:
        loaded = load_run(args.run, ema=True)
    recipe = recipe_module(loaded.recipe)
    loaded.config = with_data(recipe, loaded.config, args.data)
    specs = recipe.export_specs(loaded.config)
    if not specs:
        raise ExportError(f"{args.run}: a '{loaded.recipe}' run has no exportable nets")
    net_name = args.net or next(iter(specs))
    if net_name not in specs:
        raise ExportError(f"{args.run}: no net '{net_name}' to export; choose one of {', '.join(specs)}")
    spec = specs[net_name]
    net = loaded.generators[net_name].float().eval()

    metrics, headline, notes = [], None, [args.notes] if getattr(args, "notes", "") else []
    quality_bar = quality_bar_from_json(getattr(args, "quality_bar", None))
    if card is not None and not args.eval:  # re-export of a zoo model: its measured metrics still hold
        # (schema 1 cards kept the INT8 gate's two measurements as metrics; the gate is measured anew)
        metrics = [m.model_dump(mode="json") for m in card.metrics if not m.name.startswith("int8_headline")]
        headline = card.headline_metric
        notes = notes or ([card.notes] if card.notes else [])
        quality_bar = quality_bar or card.quality_bar  # judged on those same metrics
    # weights rebuilt from an INT8 file keep their rounding, also through later re-exports
    dequantized = card is not None and (
        bool(getattr(args, "dequantize", False))
        or (card.parity is not None and card.parity.weights == "dequantized_int8")
    )
    if args.eval:
        report = json.loads(Path(args.eval).read_text(encoding="utf-8"))
        metrics, headline = metrics_from_eval(report, net_name)
        if int(report.get("step", loaded.step)) != loaded.step:
            notes.append(
                f"Metrics were measured at step {report.get('step')}, the exported weights are step {loaded.step}."
            )
    io_options = IOOptions(args.data, args.judge, args.calibration_images, args.int8_images)
    io = recipe.export_io(loaded, net_name, spec, io_options) if hasattr(recipe, "export_io") else ExportIO()
    try:
        rows = io.grid() if io.grid is not None else None
    except (OSError, ValueError) as e:  # data not on this machine: no grid rather than a fake one
        rows = None
        print(f"transfigure export: no sample grid ({e})", file=sys.stderr)
    options = ExportOptions(
        opset=args.opset, atol=args.atol, int8=args.int8, int8_max_loss=args.int8_max_loss,
        calibration_images=args.calibration_images, prefer_dynamo=not args.torchscript,
    )  # fmt: skip
    calibration = io.calibration() if args.int8 and io.calibration is not None else None
    return export_net(
        net, spec, name=args.name, out_root=args.out,
        training=dict(card.training.model_dump(mode="json"), commit=git_commit()) if card is not None
        else training_info(loaded, spec, net_name),
        metrics=metrics, headline=headline, grid_rows=rows, options=options, calibration=calibration,
        int8_metric=io.metric if args.int8 else None, int8_higher_is_better=io.higher_is_better, notes=" ".join(notes),
        command=command_line(args, "export"), quality_bar=quality_bar,
        weights="dequantized_int8" if dequantized else "trained",
    )  # fmt: skip


def quality_bar_from_json(text: str | None) -> QualityBar | None:
    """``--quality-bar``: the verdict as JSON (a QualityBar), checked before anything is exported."""
    if not text:
        return None
    try:
        return QualityBar.model_validate_json(text)
    except ValueError as e:
        raise ExportError(f"--quality-bar is not a valid quality-bar verdict: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        help="training run folder (with checkpoints/last.pt), or a zoo model folder to re-export from its "
        "card and an fp32 ONNX file (--onnx) when the run is gone: the card's metrics and provenance are kept",
    )
    parser.add_argument(
        "--onnx", default=None, help="with a zoo model folder: its fp32 ONNX file (default: the folder's own)"
    )
    parser.add_argument(
        "--dequantize",
        action="store_true",
        help="with a zoo model folder whose only ONNX file is INT8: rebuild the net from its dequantized "
        "weights (they keep their INT8 rounding; the card says so)",
    )
    parser.add_argument("--name", required=True, help="model name in the zoo (lower case, digits, - and _)")
    parser.add_argument("--net", default=None, help="which net (CycleGAN: G_AB or G_BA; default: the first)")
    parser.add_argument(
        "--out", default=None, help="zoo folder (default: $TRANSFIGURE_MODELS_DIR or models/)"
    )
    parser.add_argument(
        "--eval", default=None, help="RUN/eval/NAME.json from `transfigure evaluate`: card metrics"
    )
    parser.add_argument(
        "--data", default=None, help="dataset folder if not the run's (srgan: HR test images)"
    )
    parser.add_argument(
        "--judge", default=None, help="sample models with --int8: classifier run to measure accuracy"
    )
    parser.add_argument("--notes", default="", help="free text for the card's notes (read by people only)")
    parser.add_argument(
        "--quality-bar",
        default=None,
        help="the model's quality-bar verdict as JSON (models.card.QualityBar; python -m training.zoo "
        "writes it), recorded in the card's quality_bar",
    )
    parser.add_argument("--opset", type=int, default=ExportOptions.opset, help="ONNX opset (>= 17)")
    parser.add_argument(
        "--atol", type=float, default=ExportOptions.atol, help="parity tolerance, output units"
    )
    parser.add_argument("--torchscript", action="store_true", help="skip the dynamo exporter")
    parser.add_argument("--int8", action="store_true", help="also try INT8 static quantisation (QDQ)")
    parser.add_argument("--int8-max-loss", type=float, default=ExportOptions.int8_max_loss,
                        help="keep INT8 only if the headline metric loses at most this fraction")  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=ExportOptions.calibration_images,
                        help="training images used to calibrate INT8")  # fmt: skip
    parser.add_argument(
        "--int8-images", type=int, default=None, help="test images for the INT8 metric (default all)"
    )


def run(args: argparse.Namespace) -> int:
    from models import CardError, zoo_dir
    from training.fid import InceptionUnavailable

    if args.out is None:
        args.out = str(zoo_dir())
    try:
        res = export_run(args)
    except (ExportError, CardError, InceptionUnavailable, FileNotFoundError, ValueError) as e:
        print(f"transfigure export: {e}", file=sys.stderr)
        return 1
    print(f"exported {res.card.name} -> {res.folder} ({res.exporter} exporter, {res.card.precision})")
    for r in res.parity:
        print(f"  parity {r.describe()}")
    if res.int8:
        print("  " + res.int8.summary())
    if res.card.quality_bar:
        print("  " + res.card.quality_bar.summary())
    return 0
