"""Sampling requests as rows of numbers, and the style controls of a style-based sample model.

Every sample of ``/sample`` (and of ``transfigure batch`` sampling) is one float32 row:
``[model index, label, psi, mix_layer, blend, z (latent width), z2 (latent width)]``, so requests
for different models and controls can share one batch (``/sample_batch``). ``latent width`` is the
largest latent size of the loaded sample models; a model reads the first ``latent_dim`` columns of
each latent. A model whose card has no ``style`` record (a DCGAN sampler) reads only the label and
``z``; a style model also reads ``psi``, ``z2``, ``mix_layer`` and ``blend`` (``models.card``):

* **truncation** ``psi`` in [0, 1]: 1 is the model as trained, lower values trade variety for
  fidelity, 0 gives every seed the class's average image;
* **mix** (a second seed and a style layer): sample ``i`` takes its styles from the layer on from
  sample ``i`` of the second seed (coarse layers first: a low layer keeps little of the first seed);
* **interpolate** (a second seed and a number of steps): a strip from the first sample of ``seed``
  to the first sample of the second seed, linearly in W.

Problems are :class:`ControlError` with a message that names the field, safe to show the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.card import (
    BLEND_INPUT,
    LABEL_INPUT,
    MIX_LAYER_INPUT,
    PSI_INPUT,
    Z2_INPUT,
    Z_INPUT,
    ModelCard,
)
from service.imaging import sample_latents

HEAD = 5  # columns before the latents
MODEL, LABEL, PSI, MIX_LAYER, BLEND = range(HEAD)
MAX_SEED = 2**63 - 1


class ControlError(ValueError):
    """A sampling control the model cannot honour, or one out of range; the message names it."""


@dataclass(frozen=True)
class Mix:
    """Style mixing: from style layer ``layer`` on, the styles of the samples of ``seed``."""

    seed: int
    layer: int


@dataclass(frozen=True)
class Interpolation:
    """A strip of ``steps`` images from the first sample of the request's seed to that of ``seed``."""

    seed: int
    steps: int


@dataclass(frozen=True)
class Controls:
    truncation: float = 1.0
    mix: Mix | None = None
    interpolate: Interpolation | None = None


def row_width(latent_width: int) -> int:
    return HEAD + 2 * latent_width


def _unsupported(card: ModelCard, what: str) -> ControlError:
    return ControlError(
        f"model '{card.name}' does not support {what}: its graph takes only z and label (a DCGAN sampler); "
        "use a style-based sample model (its /models card has a 'style' record)"
    )


def _check_seed(field: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ControlError(f"{field} must be between 0 and 2**63-1, got {seed}")


def check_controls(card: ModelCard, controls: Controls, max_samples: int) -> None:
    """Raise :class:`ControlError` for a control out of range or one ``card``'s graph cannot take."""
    psi = controls.truncation
    if not (math.isfinite(psi) and 0.0 <= psi <= 1.0):
        raise ControlError(
            f"truncation must be between 0 and 1 (1: none, 0: the class's average image), got {psi}"
        )
    style = card.style
    if psi != 1.0 and style is None:
        raise _unsupported(card, "truncation")
    if controls.mix is not None and controls.interpolate is not None:
        raise ControlError(
            "mix and interpolate cannot be combined: a sample has one second seed; ask for one of them"
        )
    if controls.mix is not None:
        if style is None:
            raise _unsupported(card, "style mixing (mix)")
        _check_seed("mix.seed", controls.mix.seed)
        if not 0 <= controls.mix.layer <= style.layers:
            raise ControlError(
                f"mix.layer must be between 0 and {style.layers} (the model's style layers, coarsest first; "
                f"{style.layers}: no mixing), got {controls.mix.layer}"
            )
    if controls.interpolate is not None:
        if style is None:
            raise _unsupported(card, "interpolate")
        _check_seed("interpolate.seed", controls.interpolate.seed)
        if not 2 <= controls.interpolate.steps <= max_samples:
            raise ControlError(
                f"interpolate.steps must be between 2 and {max_samples}, got {controls.interpolate.steps}"
            )


def count(controls: Controls, n: int) -> int:
    """How many images a request draws: ``n``, or the steps of an interpolation."""
    return controls.interpolate.steps if controls.interpolate is not None else n


def plan_rows(
    card: ModelCard, model_index: int, latent_width: int, label: int, n: int, seed: int, controls: Controls
) -> np.ndarray:
    """The rows of one request (checked with :func:`check_controls` first): ``n`` samples of ``seed``
    or an interpolation strip."""
    assert card.latent_dim is not None
    latent = card.latent_dim
    layers = card.style.layers if card.style is not None else 0
    if controls.interpolate is not None:
        steps = controls.interpolate.steps
        z = np.repeat(sample_latents(latent, 1, seed), steps, axis=0)
        z2 = np.repeat(sample_latents(latent, 1, controls.interpolate.seed), steps, axis=0)
        blend = np.linspace(0.0, 1.0, steps, dtype=np.float32)
        mix_layer = layers
    else:
        steps = n
        z = sample_latents(latent, n, seed)
        z2 = sample_latents(latent, n, controls.mix.seed) if controls.mix is not None else z
        blend = np.zeros(n, np.float32)
        mix_layer = controls.mix.layer if controls.mix is not None else layers
    rows = np.zeros((steps, row_width(latent_width)), np.float32)
    rows[:, MODEL], rows[:, LABEL] = model_index, label
    rows[:, PSI], rows[:, MIX_LAYER], rows[:, BLEND] = controls.truncation, mix_layer, blend
    rows[:, HEAD : HEAD + latent] = z
    rows[:, HEAD + latent_width : HEAD + latent_width + latent] = z2
    return rows


def feeds(card: ModelCard, rows: np.ndarray, latent_width: int) -> dict[str, np.ndarray]:
    """The graph inputs of ``card``'s model for ``rows`` (all of that model)."""
    assert card.latent_dim is not None
    latent = card.latent_dim
    out = {
        Z_INPUT: np.ascontiguousarray(rows[:, HEAD : HEAD + latent], dtype=np.float32),
        LABEL_INPUT: rows[:, LABEL].astype(np.int64),
    }
    if card.style is not None:
        out[PSI_INPUT] = np.ascontiguousarray(rows[:, PSI], dtype=np.float32)
        out[Z2_INPUT] = np.ascontiguousarray(
            rows[:, HEAD + latent_width : HEAD + latent_width + latent], dtype=np.float32
        )
        out[MIX_LAYER_INPUT] = rows[:, MIX_LAYER].astype(np.int64)
        out[BLEND_INPUT] = np.ascontiguousarray(rows[:, BLEND], dtype=np.float32)
    return out


def check_rows(rows: np.ndarray, cards: list[ModelCard], latent_width: int) -> None:
    """Raise :class:`ControlError` unless every row is one ``cards[model index]`` can run."""
    if rows.ndim != 2 or rows.shape[1] != row_width(latent_width):
        raise ControlError(f"rows must be N x {row_width(latent_width)}, got shape {rows.shape}")
    idx = rows[:, MODEL]
    if (
        not np.isfinite(rows).all()
        or (idx != np.round(idx)).any()
        or idx.min() < 0
        or idx.max() >= len(cards)
    ):
        raise ControlError("column 0 must be a sample model index")
    for i, card in enumerate(cards):
        mine = rows[idx == i]
        if not len(mine):
            continue
        lab, n_classes = mine[:, LABEL], len(card.classes or [])
        if (lab != np.round(lab)).any() or lab.min() < 0 or lab.max() >= n_classes:
            raise ControlError(f"column 1 must be a class index of model '{card.name}'")
        if card.style is None:
            continue
        psi, blend, layer = mine[:, PSI], mine[:, BLEND], mine[:, MIX_LAYER]
        if psi.min() < 0 or psi.max() > 1 or blend.min() < 0 or blend.max() > 1:
            raise ControlError(f"columns 2 (psi) and 4 (blend) must be in [0, 1] for model '{card.name}'")
        if (layer != np.round(layer)).any() or layer.min() < 0 or layer.max() > card.style.layers:
            raise ControlError(
                f"column 3 must be a style layer 0..{card.style.layers} of model '{card.name}'"
            )
