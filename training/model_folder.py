"""A zoo model folder: the card built from a net, its spec and an evaluation report, and the folder
(ONNX file + card.json + sample grid) written whole or not at all."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from models.card import CARD_FILE, STYLE_INPUTS, ModelCard, QualityBar
from training.macs import count_macs, count_parameters
from training.onnx_export import ExportError, example_inputs

GRID_FILE = "samples.png"


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


def quality_bar_from_json(text: str | None) -> QualityBar | None:
    """``--quality-bar``: the verdict as JSON (a QualityBar), checked before anything is exported."""
    if not text:
        return None
    try:
        return QualityBar.model_validate_json(text)
    except ValueError as e:
        raise ExportError(f"--quality-bar is not a valid quality-bar verdict: {e}") from None


# -- card and folder -------------------------------------------------------------------------------
def macs_256(net, spec) -> int:
    """Real MACs for one 256x256 input (translate/upscale) or one sample (sample models)."""
    if spec.task == "sample":
        return count_macs(net, *example_inputs(spec, batch=2), per_sample=True)
    return count_macs(net, *example_inputs(spec, batch=1, size=(256, 256)))


def architecture_name(net) -> str:
    return f"{type(net).__name__} ({count_parameters(net) / 1e6:.2f} M parameters)"


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
        if getattr(spec, "style_layers", None):
            card["style"] = {"inputs": list(STYLE_INPUTS), "layers": int(spec.style_layers)}
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
        written = ModelCard.load(tmp / CARD_FILE)  # what the service will check, before it is live
        written.verify_file(tmp)
        written.verify_gpu_file(tmp)
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
