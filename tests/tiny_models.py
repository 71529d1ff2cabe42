"""Tiny ONNX models + cards for tests, built with ``onnx.helper`` (no torch, no downloads).

Each model honours the tensor contract of CONTRIBUTING.md and has an output a test can predict:

* ``translate`` — ``output = -image`` (an exact colour inversion in [-1, 1]); the graph also pools
  by ``multiple_of`` and upsamples back (times zero), so ORT *fails* on sizes that are not a
  multiple — a test that forgot to pad would notice.
* ``upscale`` — a 3x3 box blur (zero padding) then nearest-neighbour upsampling by ``scale``; smooth
  and with a 3 px receptive field, so tiled and untiled outputs must agree.
* ``sample`` — ``tanh((z + embed[label]) @ W)`` reshaped to N x C x S x S: deterministic, depends on
  both z and the label, and each sample is independent of the rest of the batch.
* ``style`` (``make_model(root, "style")``) — a sample model with the style inputs of
  ``models.card.STYLE_INPUTS`` and :data:`TINY_STYLE_LAYERS` style layers, computed exactly by
  :func:`tiny_style_reference`: the class's average w is ``embed[label]`` and w is
  ``embed[label] + z``, so psi 0 gives every z the same image.

Use ``make_zoo(tmp_path)`` for a zoo folder with one model per kind, or ``make_model`` for one.
``make_guided_model`` (needs torch) exports a real ``GuidedTranslator`` with the repository's own
export code: a translator of any size in near-constant time, for tests and benchmarks at 12 MP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.card import (
    BLEND_INPUT,
    IMAGE_INPUT,
    LABEL_INPUT,
    MIX_LAYER_INPUT,
    OUTPUT,
    PSI_INPUT,
    STYLE_INPUTS,
    Z2_INPUT,
    Z_INPUT,
    ModelCard,
    sha256_file,
)

OPSET = 17
IR_VERSION = 8  # old enough for every onnxruntime >= 1.14
KINDS = ("translate", "sample", "upscale")
DEFAULT_CLASSES = ("apple", "cat", "fish")
TINY_STYLE_LAYERS = 2


def _image_vi(name: str, channels: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "H", "W"])


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def translate_graph(
    path: Path, channels: int = 3, out_channels: int | None = None, multiple_of: int = 4
) -> None:
    """``output = -image`` (channel-averaged when out_channels differs), failing off-multiple sizes."""
    out_channels = out_channels or channels
    nodes = []
    x = IMAGE_INPUT
    if out_channels != channels:
        nodes.append(helper.make_node("ReduceMean", [x], ["mean"], axes=[1], keepdims=1))
        nodes.append(helper.make_node("Tile", ["mean", "reps"], ["x_c"]))
        x = "x_c"
    nodes += [
        helper.make_node("Neg", [x], ["neg"]),
        helper.make_node(
            "AveragePool", [x], ["down"], kernel_shape=[multiple_of] * 2, strides=[multiple_of] * 2
        ),
        helper.make_node("Resize", ["down", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Mul", ["up", "zero"], ["nothing"]),
        helper.make_node("Add", ["neg", "nothing"], [OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, multiple_of, multiple_of], np.float32), "scales"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([1, out_channels, 1, 1], np.int64), "reps"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_translate", [_image_vi(IMAGE_INPUT, channels)], [_image_vi(OUTPUT, out_channels)], inits
    )
    _save(graph, path)


def upscale_graph(path: Path, scale: int = 2, channels: int = 3) -> None:
    """3x3 box blur per channel, then nearest upsampling by ``scale``."""
    w = np.full((channels, 1, 3, 3), 1.0 / 9.0, np.float32)
    nodes = [
        helper.make_node("Conv", [IMAGE_INPUT, "w"], ["blur"], pads=[1, 1, 1, 1], group=channels),
        helper.make_node("Resize", ["blur", "", "scales"], [OUTPUT], mode="nearest"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_upscale", [_image_vi(IMAGE_INPUT, channels)], [_image_vi(OUTPUT, channels)], inits
    )
    _save(graph, path)


def sample_graph(
    path: Path, latent_dim: int = 8, n_classes: int = 3, size: int = 8, channels: int = 1
) -> None:
    """``tanh((z + embed[label]) @ W)`` -> N x C x S x S."""
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((n_classes, latent_dim)).astype(np.float32)
    weight = (rng.standard_normal((latent_dim, channels * size * size)) / np.sqrt(latent_dim)).astype(
        np.float32
    )
    nodes = [
        helper.make_node("Gather", ["embed", LABEL_INPUT], ["e"], axis=0),
        helper.make_node("Add", [Z_INPUT, "e"], ["h"]),
        helper.make_node("MatMul", ["h", "weight"], ["flat"]),
        helper.make_node("Tanh", ["flat"], ["act"]),
        helper.make_node("Reshape", ["act", "shape"], [OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(embed, "embed"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.array([-1, channels, size, size], np.int64), "shape"),
    ]
    inputs = [
        helper.make_tensor_value_info(Z_INPUT, TensorProto.FLOAT, ["N", latent_dim]),
        helper.make_tensor_value_info(LABEL_INPUT, TensorProto.INT64, ["N"]),
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", channels, size, size])]
    _save(helper.make_graph(nodes, "tiny_sample", inputs, outputs, inits), path)


def _style_weights(latent_dim: int, n_classes: int, size: int, channels: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    embed = rng.standard_normal((n_classes, latent_dim)).astype(np.float32)
    per_layer = [
        (rng.standard_normal((latent_dim, channels * size * size)) / np.sqrt(latent_dim)).astype(np.float32)
        for _ in range(TINY_STYLE_LAYERS)
    ]
    return [embed, *per_layer]


def tiny_style_reference(
    feeds: dict[str, np.ndarray], latent_dim: int = 8, n_classes: int = 3, size: int = 8, channels: int = 1
) -> np.ndarray:
    """What the tiny style graph computes for ``feeds``, in numpy (N x C x S x S)."""
    embed, *weights = _style_weights(latent_dim, n_classes, size, channels)
    e = embed[feeds[LABEL_INPUT]]
    psi = feeds[PSI_INPUT][:, None]
    w1, w2 = e + psi * feeds[Z_INPUT], e + psi * feeds[Z2_INPUT]
    base = w1 + feeds[BLEND_INPUT][:, None] * (w2 - w1)
    mix = feeds[MIX_LAYER_INPUT][:, None]
    flat = sum(np.where(i >= mix, w2, base) @ w for i, w in enumerate(weights))
    return np.tanh(flat).reshape(-1, channels, size, size)


def style_sample_graph(
    path: Path, latent_dim: int = 8, n_classes: int = 3, size: int = 8, channels: int = 1
) -> None:
    """A sample graph with the style inputs (see :func:`tiny_style_reference`)."""
    embed, *weights = _style_weights(latent_dim, n_classes, size, channels)
    nodes = [
        helper.make_node("Gather", ["embed", LABEL_INPUT], ["e"], axis=0),
        helper.make_node("Unsqueeze", [PSI_INPUT, "axis1"], ["psi1"]),
        helper.make_node("Unsqueeze", [BLEND_INPUT, "axis1"], ["blend1"]),
        helper.make_node("Unsqueeze", [MIX_LAYER_INPUT, "axis1"], ["mix1"]),
        helper.make_node("Mul", ["psi1", Z_INPUT], ["pz1"]),
        helper.make_node("Mul", ["psi1", Z2_INPUT], ["pz2"]),
        helper.make_node("Add", ["e", "pz1"], ["w1"]),
        helper.make_node("Add", ["e", "pz2"], ["w2"]),
        helper.make_node("Sub", ["w2", "w1"], ["dw"]),
        helper.make_node("Mul", ["blend1", "dw"], ["bdw"]),
        helper.make_node("Add", ["w1", "bdw"], ["base"]),
    ]
    terms = []
    for i in range(TINY_STYLE_LAYERS):
        nodes += [
            helper.make_node("LessOrEqual", ["mix1", f"layer{i}"], [f"takes{i}"]),
            helper.make_node("Where", [f"takes{i}", "w2", "base"], [f"s{i}"]),
            helper.make_node("MatMul", [f"s{i}", f"weight{i}"], [f"t{i}"]),
        ]
        terms.append(f"t{i}")
    nodes += [
        helper.make_node("Sum", terms, ["flat"]),
        helper.make_node("Tanh", ["flat"], ["act"]),
        helper.make_node("Reshape", ["act", "shape"], [OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(embed, "embed"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1, channels, size, size], np.int64), "shape"),
    ]
    for i, w in enumerate(weights):
        inits += [
            numpy_helper.from_array(w, f"weight{i}"),
            numpy_helper.from_array(np.array(i, np.int64), f"layer{i}"),
        ]
    vi = helper.make_tensor_value_info
    inputs = [
        vi(Z_INPUT, TensorProto.FLOAT, ["N", latent_dim]),
        vi(LABEL_INPUT, TensorProto.INT64, ["N"]),
        vi(PSI_INPUT, TensorProto.FLOAT, ["N"]),
        vi(Z2_INPUT, TensorProto.FLOAT, ["N", latent_dim]),
        vi(MIX_LAYER_INPUT, TensorProto.INT64, ["N"]),
        vi(BLEND_INPUT, TensorProto.FLOAT, ["N"]),
    ]
    outputs = [vi(OUTPUT, TensorProto.FLOAT, ["N", channels, size, size])]
    _save(helper.make_graph(nodes, "tiny_style", inputs, outputs, inits), path)


def card_dict(name: str, task: str, sha256: str, **overrides: Any) -> dict[str, Any]:
    """A valid card for a tiny model; ``overrides`` replace top-level fields."""
    method = {"translate": "cyclegan", "sample": "cgan", "style": "cgan", "upscale": "srgan"}[task]
    card: dict[str, Any] = {
        "name": name,
        "task": task,
        "method": method,
        "description": f"Tiny {task} model for tests.",
        "architecture": f"tests.tiny_models.{task}_graph",
        "parameters": 0,
        "macs_256": 0,
        "onnx_file": "model.onnx",
        "sha256": sha256,
        "opset": OPSET,
        "output": {"channels": 3, "range": [-1, 1]},
        "training": {
            "dataset": "none",
            "source": "generated by tests/tiny_models.py",
            "license": "Apache-2.0",
            "split_sizes": {},
            "recipe_config": {},
            "steps": 0,
            "wall_time_s": 0.0,
            "hardware": "none",
            "commit": "test",
        },
        "metrics": [],
    }
    card.update(overrides)
    return card


def make_model(
    root: Path,
    kind: str,
    name: str | None = None,
    *,
    channels: int = 3,
    out_channels: int | None = None,
    multiple_of: int = 4,
    native_size: int = 32,
    scale: int = 2,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    latent_dim: int = 8,
    output_size: int = 8,
    sample_channels: int = 1,
) -> Path:
    """Write ``root/<name>/model.onnx`` + ``card.json`` for one kind; returns the model folder."""
    name = name or f"tiny-{kind}"
    folder = Path(root) / name
    onnx_path = folder / "model.onnx"
    if kind == "translate":
        out_channels = out_channels or channels
        translate_graph(onnx_path, channels, out_channels, multiple_of)
        extra: dict[str, Any] = {
            "input": {
                "channels": channels,
                "range": [-1, 1],
                "multiple_of": multiple_of,
                "native_size": native_size,
            },
            "output": {"channels": out_channels, "range": [-1, 1]},
        }
    elif kind == "upscale":
        upscale_graph(onnx_path, scale, channels)
        extra = {
            "input": {"channels": channels, "range": [0, 1], "multiple_of": 1, "native_size": native_size},
            "output": {"channels": channels, "range": [0, 1]},
            "scale": scale,
        }
    elif kind in ("sample", "style"):
        if kind == "style":
            style_sample_graph(onnx_path, latent_dim, len(classes), output_size, sample_channels)
        else:
            sample_graph(onnx_path, latent_dim, len(classes), output_size, sample_channels)
        extra = {
            "output": {"channels": sample_channels, "range": [-1, 1]},
            "classes": list(classes),
            "latent_dim": latent_dim,
            "output_size": output_size,
        }
        if kind == "style":
            extra["style"] = {"inputs": list(STYLE_INPUTS), "layers": TINY_STYLE_LAYERS}
    else:
        raise ValueError(f"unknown kind '{kind}': use one of {KINDS} or 'style'")
    task = "sample" if kind == "style" else kind
    ModelCard.from_dict({**card_dict(name, kind, sha256_file(onnx_path), **extra), "task": task}).save(folder)
    return folder


def make_zoo(root: Path, kinds: tuple[str, ...] = KINDS) -> Path:
    """A zoo folder with one tiny model per kind (named ``tiny-<kind>``); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        make_model(root, kind)
    return root


def make_guided_model(
    root: Path, name: str = "guided", *, perturb: float = 0.01, seed: int = 0, low_size: int = 128
) -> Path:
    """Export an untrained ``GuidedTranslator`` to ``root/<name>/`` with ``training.export``; returns the folder.

    Untrained, the translator is the identity; ``perturb`` > 0 gives its last conv small random
    weights (``seed``) so that it changes the image a little, as a trained one would. The card is
    the exporter's own (parity-checked, sha256, parameters, MACs). Needs torch (the train extra).
    """
    import torch

    from training import export
    from training.networks.guided import GuidedTranslator
    from training.recipes import ExportSpec

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = GuidedTranslator(low_size=low_size).eval()
        head = net.net.model[-2]  # the last conv; it starts at zero (the identity)
        with torch.no_grad():
            head.weight.normal_(0.0, perturb)
            head.bias.normal_(0.0, perturb)
    spec = ExportSpec(
        task="translate",
        method="cyclegan",
        description="Untrained GuidedTranslator with a perturbed head, for tests and benchmarks.",
        output_channels=3,
        input_channels=3,
        input_range=(-1.0, 1.0),
        multiple_of=net.multiple_of,
        native_size=low_size,
    )
    c = net.config
    recipe = {
        "recipe": "cyclegan",
        "net": "G_AB",
        "config": {
            "generator": "guided", "low_size": c["low_size"], "ngf": c["ngf"], "n_blocks": c["n_blocks"],
            "norm": c["norm"], "gf_radius": c["radius"], "gf_eps": c["eps"], "detail": c["detail"],
            "upsample": c["upsample"],
        },
    }  # fmt: skip
    training = {
        "dataset": "none",
        "source": "generated by tests/tiny_models.py (untrained)",
        "license": "Apache-2.0",
        "split_sizes": {},
        "recipe_config": recipe,
        "steps": 0,
        "wall_time_s": 0.0,
        "hardware": "none",
        "commit": "test",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the export's parity run is tiny; do not take every core
    try:
        result = export.export_net(net, spec, name=name, out_root=root, training=training)
    finally:
        torch.set_num_threads(threads)
    return result.folder
