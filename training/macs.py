"""Count the multiply-accumulates a network really performs, with forward hooks.

Only the layers that dominate the cost are counted (Conv*, ConvTranspose*, Linear); biases,
norms, activations, pooling and resampling are ignored. The rules, per forward call:

* ``ConvNd``: every output element costs ``C_in / groups * prod(kernel)`` MACs;
* ``ConvTransposeNd``: counted at its **input** size: every input element is scattered into
  ``C_out / groups * prod(kernel)`` outputs (the card's ``macs_256`` says so);
* ``Linear``: every output element costs ``in_features`` MACs.

Hooks see the real shapes, so strides, padding, dilation and data-dependent paths are all right
without re-deriving each layer's output size by hand.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one call of a counted layer (0 for any other module)."""
    if isinstance(module, _CONV):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, _CONV_T):
        return inp.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


@torch.inference_mode()
def count_macs(model: nn.Module, *inputs: Any, per_sample: bool = False) -> int:
    """Total MACs of ``model(*inputs)``; with ``per_sample`` divided by the batch size (first dim of input 0)."""
    total = 0

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(module, args[0], output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, _CONV + _CONV_T + (nn.Linear,))
    ]
    was_training = model.training
    try:
        model.eval()
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if per_sample:
        batch = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 1
        return total // max(batch, 1)
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
