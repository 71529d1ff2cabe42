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

Each step has its own module: :mod:`training.onnx_export` (2, 3), :mod:`training.int8` (4),
:mod:`training.model_folder` and :mod:`training.provenance` (5), :mod:`training.grids` (the sample
grid); :mod:`training.export_io` makes each task's grid, calibration inputs and INT8 metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import CardError, zoo_dir
from models.card import CARD_FILE, Int8Gate, ModelCard, QualityBar, relative_loss, sha256_file
from training.evaluate import command_line
from training.export_io import ExportIO, IOOptions
from training.fid import InceptionUnavailable
from training.grids import grid_png
from training.int8 import CALIBRATION_IMAGES, quantize_int8, time_sessions
from training.model_folder import (
    GRID_FILE,
    card_dict,
    metrics_from_eval,
    quality_bar_from_json,
    write_model_folder,
)
from training.onnx_export import PARITY_COMPARED, ExportError, ParityResult, check_parity, export_onnx
from training.provenance import git_commit, training_info
from training.recipes import load_run, load_run_from_card, recipe_module, with_data

GPU_FP32_FILE = "model_fp32.onnx"


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 18  # >= 17 (LayerNorm, GridSample ...); 18 is the dynamo exporter's native opset
    atol: float = 1e-4  # parity: max |onnxruntime - torch| in output units (range [-1, 1] or [0, 1])
    parity_seed: int = 1234
    int8: bool = False
    int8_max_loss: float = 0.03  # keep int8 only if the headline metric loses at most 3 % (relative)
    calibration_images: int = CALIBRATION_IMAGES
    prefer_dynamo: bool = True
    gpu_fp32: bool = False  # an INT8 file shipped: keep the fp32 one too, for the CUDA provider


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
        gpu_file = options.gpu_fp32 and precision == "int8"
        if gpu_file:  # the service runs this one on onnxruntime's CUDA provider (service.zoo)
            data["gpu_file"] = {"file": GPU_FP32_FILE, "sha256": sha256_file(fp32), "precision": "fp32"}
        card = ModelCard.from_dict(data, source=f"card for '{name}'")  # validated before writing anything
        files: dict[str, Path | bytes] = {card.onnx_file: chosen}
        if gpu_file:
            files[GPU_FP32_FILE] = fp32
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


def _source_card(run: str | Path) -> ModelCard | None:
    """The card when ``run`` is a zoo model folder (re-export without the training run), else None."""
    card_path = Path(run) / CARD_FILE
    return ModelCard.load(card_path) if card_path.is_file() else None


def export_run(args: argparse.Namespace) -> ExportResult:
    card = _source_card(args.run)
    if card is None and getattr(args, "dequantize", False):
        raise ExportError(f"{args.run}: --dequantize needs a zoo model folder (with {CARD_FILE}), not a run")
    if card is not None:
        dequantize = bool(getattr(args, "dequantize", False))
        loaded = load_run_from_card(args.run, getattr(args, "onnx", None), dequantize=dequantize)
        args.net = args.net or next(iter(loaded.nets))
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
    net = loaded.nets[net_name].float().eval()

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
        opset=args.opset, atol=args.atol, int8=args.int8, int8_max_loss=args.int8_max_loss, gpu_fp32=args.gpu_fp32,
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
    parser.add_argument(
        "--gpu-fp32",
        action="store_true",
        help=f"with --int8: when the INT8 file ships, keep the fp32 one too ({GPU_FP32_FILE}, the card's "
        "gpu_file), which the service runs on onnxruntime's CUDA provider (INT8 QDQ files are made for the CPU's)",
    )
    parser.add_argument("--int8-max-loss", type=float, default=ExportOptions.int8_max_loss,
                        help="keep INT8 only if the headline metric loses at most this fraction")  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=ExportOptions.calibration_images,
                        help="training images used to calibrate INT8")  # fmt: skip
    parser.add_argument(
        "--int8-images", type=int, default=None, help="test images for the INT8 metric (default all)"
    )


def run(args: argparse.Namespace) -> int:
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
