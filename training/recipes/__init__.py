"""Recipes: one module per method, the registry that names them, and the contract that training,
evaluation and export rely on.

A recipe module provides:

* ``Config`` — a dataclass with every knob and its default (saved with each checkpoint, so that
  evaluation and export rebuild exactly the trained nets);
* ``add_arguments(parser)`` / ``run(args) -> int`` — its ``transfigure train <name>`` command;
* ``build_inference_nets(config) -> dict[str, nn.Module]`` — the nets a finished run is used
  through (exported, evaluated, or used as a judge), by the names they carry in checkpoints
  (``G_AB``/``G_BA`` for CycleGAN, ``C`` for the classifier, ``G`` for the others).;
* ``export_specs(config) -> dict[str, ExportSpec]`` — for each exportable net, what its card says
  about its interface (task, tensor layout, classes, scale); ``{}``: nothing to export.

and, for evaluation and export (each optional; without it the run has nothing to evaluate, or its
export has no sample grid and no ``--int8``):

* ``evaluate(run, report, options, data, judge) -> str`` — measure a :class:`LoadedRun`'s nets into
  ``report`` (:class:`training.evaluate.Report`) with the shared evaluators of
  :mod:`training.evaluate` (own-size translation, upscaling, sample judge); ``data`` and ``judge``
  are ``transfigure evaluate``'s ``--data`` and ``--judge``. Returns the folder the report is named
  after ("" for none);
* ``export_io(run, net, spec, options) -> training.export_io.ExportIO`` — the sample grid, the INT8
  calibration inputs and the INT8 headline metric of one net, usually made by the shared makers of
  :mod:`training.export_io` (``translation_export_io``, ``upscale_export_io``, ``sample_export_io``);
  ``options`` is a :class:`training.export_io.IOOptions` (``--data``, ``--judge``, image counts);
* ``with_data(config, data) -> config`` — the config with evaluate's / export's ``--data`` applied;
  default: ``data`` replaces ``config.data``.

A translate recipe also provides what evaluating a zoo model folder of it needs (the ONNX file as
shipped, on the splits rebuilt from the card's ``training.recipe_config``): ``TRANSLATE_NETS`` (its
translate nets, the first is the default) and ``translation_images(config, net) ->
training.evaluate.TranslationImages``; its ``evaluate`` usually calls
:func:`training.evaluate.evaluate_run_translation` with them.

:data:`RECIPE_MODULES` maps each recipe name to its module; :func:`register_recipe` adds one from
another package (e.g. ``register_recipe("mine", "my_package.mine")``), and so does an entry point in
the ``transfigure.recipes`` group of an installed package (``mine = "my_package.mine"``), so that
``transfigure train|evaluate|export`` know it.

A run folder (``runs/<name>/``) written by ``training.loop`` holds ``config.json`` and
``checkpoints/last.pt`` (plus ``step_*.pt``): a dict with ``recipe``, ``config``, ``step``,
``world_size``, ``nets`` and ``ema`` (state dicts by net name), optimizers, schedulers, RNG state,
``wall_time_s`` and ``hardware``; a run of several processes adds every rank's RNG and recipe
state (``rank_rng``, ``rank_extra``).
"""

from __future__ import annotations

# torch and onnx are imported inside the functions that need them: `transfigure` imports this module
# for its list of commands, also where only the serve extra (no torch) is installed
import dataclasses
import importlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from models.card import CARD_FILE, METHOD_PATTERN, ModelCard
from training.config import config_from_dict

RECIPE_MODULES = {
    "cyclegan": "training.recipes.cyclegan",
    "pix2pix": "training.recipes.pix2pix",
    "cgan": "training.recipes.cgan",
    "classifier": "training.recipes.classifier",
    "srgan": "training.recipes.srgan",
}
ENTRY_POINT_GROUP = "transfigure.recipes"
_entry_points_loaded: list[bool] = []


@dataclass(frozen=True)
class ExportSpec:
    """What the card of one exported net says about its interface (see models/card.py)."""

    task: str  # translate | sample | upscale
    method: str  # cyclegan | pix2pix | cgan | srgan
    description: str
    output_channels: int
    output_range: tuple[float, float] = (-1.0, 1.0)
    input_channels: int | None = None  # translate / upscale
    input_range: tuple[float, float] | None = None
    multiple_of: int | None = None
    native_size: int | None = None
    scale: int | None = None  # upscale
    classes: list[str] | None = None  # sample
    latent_dim: int | None = None
    output_size: int | None = None
    style_layers: int | None = None  # sample: a style generator's layers (its graph takes STYLE_INPUTS)
    dataset: dict[str, Any] = field(default_factory=dict)  # name, source, license, split_sizes
    pretrained: list[dict[str, str]] = field(default_factory=list)  # frozen networks of the losses


def register_recipe(name: str, module: str) -> None:
    """Make the recipe module ``module`` (a dotted import path) known as ``name``; registering a name
    again with another module is refused (a run's checkpoint names its recipe)."""
    if not re.fullmatch(METHOD_PATTERN, name):
        raise ValueError(
            f"recipe name '{name}': use lower-case letters, digits and _, starting with a letter "
            "(the name becomes the model card's method)"
        )
    if RECIPE_MODULES.get(name, module) != module:
        raise ValueError(f"recipe '{name}' is already registered as {RECIPE_MODULES[name]}")
    RECIPE_MODULES[name] = module


def _load_entry_points() -> None:
    """Register the recipes that installed packages name in the ``transfigure.recipes`` group, once."""
    if _entry_points_loaded:
        return
    _entry_points_loaded.append(True)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in RECIPE_MODULES:
            continue
        try:
            register_recipe(ep.name, ep.value)
        except ValueError as e:  # another package's mistake must not break every command
            warnings.warn(f"ignoring the '{ENTRY_POINT_GROUP}' entry point '{ep.name}': {e}", stacklevel=2)


def recipe_names() -> list[str]:
    """Every known recipe name, sorted."""
    _load_entry_points()
    return sorted(RECIPE_MODULES)


def recipe_module_path(name: str) -> str:
    """The dotted module path of recipe ``name``."""
    if name not in RECIPE_MODULES:
        _load_entry_points()
    if name not in RECIPE_MODULES:
        raise ValueError(f"unknown recipe '{name}': choose one of {', '.join(recipe_names())}")
    return RECIPE_MODULES[name]


def recipe_module(name: str):
    return importlib.import_module(recipe_module_path(name))


def build_inference_nets(module, config) -> dict[str, Any]:
    """``module.build_inference_nets(config)``."""
    return module.build_inference_nets(config)


def with_data(module, config, data: str | None):
    """``config`` with evaluate's / export's ``--data`` applied: the recipe's ``with_data``, else
    ``data`` replaces ``config.data``."""
    if not data:
        return config
    if hasattr(module, "with_data"):
        return module.with_data(config, data)
    return dataclasses.replace(config, data=str(data))


@dataclass
class LoadedRun:
    recipe: str
    config: Any
    nets: dict[str, Any]  # name -> inference net in eval mode (EMA weights when available)
    step: int
    wall_time_s: float
    hardware: str
    checkpoint: Path
    used_ema: bool


def find_checkpoint(run: str | Path) -> Path:
    """``run`` may be a run folder (uses checkpoints/last.pt) or a checkpoint file."""
    run = Path(run)
    if run.is_file():
        return run
    ckpt = run / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{run}: no checkpoint found (expected {ckpt}); is this a training run folder?"
        )
    return ckpt


def load_run(run: str | Path, ema: bool = True, map_location: str = "cpu") -> LoadedRun:
    """Rebuild a run's inference nets from its checkpoint (EMA weights when asked and present)."""
    import torch

    ckpt_path = find_checkpoint(run)
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    name = ckpt["recipe"]
    mod = recipe_module(name)
    config = config_from_dict(mod.Config, ckpt["config"])
    gens = build_inference_nets(mod, config)
    source = ckpt.get("ema") if ema and ckpt.get("ema") else ckpt["nets"]
    used_ema = source is ckpt.get("ema")
    for key, net in gens.items():
        state = source.get(key) if key in source else ckpt["nets"][key]
        net.load_state_dict(state)
        net.eval()
    return LoadedRun(
        recipe=name,
        config=config,
        nets=gens,
        step=int(ckpt.get("step", 0)),
        wall_time_s=float(ckpt.get("wall_time_s", 0.0)),
        hardware=str(ckpt.get("hardware", "unknown")),
        checkpoint=ckpt_path,
        used_ema=bool(used_ema),
    )


def read_run_config(run: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder: {"recipe": name, "config": {...}}."""
    return json.loads((Path(run) / "config.json").read_text())


def load_run_from_card(
    folder: str | Path, onnx_path: str | Path | None = None, dequantize: bool = False
) -> LoadedRun:
    """Rebuild a zoo model's net from its card and an fp32 ONNX file of it, when the run is gone.

    The architecture comes from the card's ``training.recipe_config``; every parameter and buffer is
    read from the ONNX initializer of the same name (the exporter keeps torch's names). A file whose
    initializers do not name all of them (an INT8 graph, another model) is refused: the net would be
    partly random. ``dequantize=True`` accepts an INT8 (QDQ) file and takes each weight from its
    DequantizeLinear, i.e. the weights keep their INT8 rounding. ``onnx_path`` defaults to the
    folder's own model file.
    """
    import torch

    folder = Path(folder)
    card = ModelCard.load(folder / CARD_FILE)
    saved = card.training.recipe_config
    config, name, net = net_from_card(card)
    path = Path(onnx_path) if onnx_path is not None else folder / card.onnx_file
    state = net.state_dict()
    tensors = onnx_tensors_for(path, state, dequantize)
    missing = [k for k in state if k not in tensors]
    if missing:
        hint = "" if dequantize else " (or, for an INT8 file, ask to dequantize its weights)"
        raise ValueError(
            f"{path}: {len(missing)} of {len(state)} tensors of the card's '{name}' net are not in the file "
            f"(e.g. {missing[0]}); pass the model's fp32 ONNX export (dynamo exporter){hint}"
        )
    net.load_state_dict({k: torch.from_numpy(tensors[k].reshape(v.shape).copy()) for k, v in state.items()})
    net.eval()
    return LoadedRun(
        recipe=saved.get("recipe", card.method),
        config=config,
        nets={name: net},
        step=int(card.training.steps or 0),
        wall_time_s=float(card.training.wall_time_s or 0.0),
        hardware=str(card.training.hardware or "unknown"),
        checkpoint=Path(str(saved.get("checkpoint", path))),
        used_ema=bool(saved.get("ema_weights", False)),
    )


def net_from_card(card) -> tuple[Any, str, Any]:
    """(config, net name, fp32 net with its initial weights) from a card's ``training.recipe_config``."""
    saved = card.training.recipe_config
    mod = recipe_module(saved.get("recipe", card.method))
    config = config_from_dict(mod.Config, saved.get("config", saved))
    nets = build_inference_nets(mod, config)
    name = saved.get("net") if saved.get("net") in nets else next(iter(nets))
    return config, name, nets[name].float()


def onnx_tensors_for(
    onnx_path: str | Path, state: dict[str, Any], dequantize: bool = False
) -> dict[str, Any]:
    """The arrays of ``onnx_path`` that hold the torch ``state`` dict's tensors, by key (maybe not all)."""
    import onnx

    model = onnx.load(str(onnx_path))
    metadata = {p.key: p.value for p in model.metadata_props}
    return _initializers_by_torch_name(model.graph, state, dequantize, metadata)


def _constant_tensors(graph, dequantize: bool) -> dict[str, Any]:
    """Initializers as arrays by name; with ``dequantize``, also every DequantizeLinear of initializers.

    A dequantized tensor is found under the DequantizeLinear's output name and under its quantized
    input's name less ``_quantized`` (onnxruntime's quantiser's naming: ``w_quantized`` -> ``w``).
    """
    from onnx import helper, numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if not dequantize:
        return arrays
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in arrays for i in node.input if i):
            continue
        q = arrays[node.input[0]].astype(np.float32)
        scale = arrays[node.input[1]].astype(np.float32)
        zero = arrays[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:  # per-channel along ``axis``
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        value = (q - zero) * scale
        arrays[node.output[0]] = value
        if node.input[0].endswith("_quantized"):
            arrays.setdefault(node.input[0][: -len("_quantized")], value)
    return arrays


def _initializers_by_torch_name(
    graph, state: dict[str, Any], dequantize: bool = False, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """Arrays for the torch state dict's keys from the ONNX constants: by name, else by module scope.

    The dynamo exporter keeps parameter names, except where it folds a reshape into a constant (a
    PReLU slope becomes ``val_5`` of shape 1 x C x 1 x 1), stores identical constants once, or drops
    an all-zero conv bias (a zero bias is then what the file computes). A renamed
    tensor is found through the ``pkg.torch.onnx.name_scopes`` metadata of the node that reads it:
    the only tensor of that node with the same number of elements not already taken by the module.
    """
    from training.int8_graph import WIDENED_SUFFIX, merge_phase_weights

    arrays = _constant_tensors(graph, dequantize)
    merge_phase_weights(arrays, metadata or {})  # ConvTranspose kernels split for INT8, put back
    for name in [n for n in arrays if n.endswith(WIDENED_SUFFIX)]:  # zero rows added for int8 kernels
        base = name[: -len(WIDENED_SUFFIX)]
        if base not in arrays and base in state and arrays[name].shape[1:] == tuple(state[base].shape[1:]):
            arrays[base] = arrays[name][: state[base].shape[0]]
    found = {
        k: arrays[k] for k, v in state.items() if k in arrays and tuple(arrays[k].shape) == tuple(v.shape)
    }
    for node in graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = json.loads(meta.get("pkg.torch.onnx.name_scopes", "[]").replace("'", '"'))
        except ValueError:
            continue
        if len(scopes) < 2:
            continue
        module = scopes[-2]
        siblings = [k for k in state if k.rsplit(".", 1)[0] == module]
        wanted = [k for k in siblings if k not in found]
        # a tensor the module already uses for another key is not a candidate; one that another
        # module uses is (the exporter stores identical constants once, e.g. two all-zero biases)
        taken = {id(found[k]) for k in siblings if k in found}
        candidates = [arrays[i] for i in node.input if i in arrays and id(arrays[i]) not in taken]
        for key in wanted:
            fits = [a for a in candidates if math.prod(a.shape) == state[key].numel()]
            if len(fits) == 1:
                found[key] = fits[0]
                candidates = [a for a in candidates if a is not fits[0]]
        bias = f"{module}.bias"
        if (
            bias in wanted
            and node.op_type in ("Conv", "ConvTranspose")
            and (len(node.input) < 3 or not node.input[2])
        ):
            found[bias] = np.zeros(tuple(state[bias].shape), np.float32)  # an all-zero bias is dropped
    return found
