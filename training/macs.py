"""Count the multiply-accumulates a network really performs, with ``torch.utils.flop_counter``.

:class:`~torch.utils.flop_counter.FlopCounterMode` sees every aten op of one real forward pass,
so strides, padding, dilation, groups and data-dependent paths are all right. It counts a
multiply-add as 2 FLOPs; MACs are half its total. What it counts, and so what a card's
``macs_256`` means:

* convolutions: every output element costs ``C_in / groups * prod(kernel)`` MACs;
* **transposed** convolutions are counted at their **input** size: every input element is
  scattered into ``C_out / groups * prod(kernel)`` outputs (the card schema says so). Tools that
  count them at the output size (thop, torchprofile) report more: 4x for a stride-2 layer;
* matrix products (``Linear``, ``matmul``, attention): ``M * N * K`` MACs;
* biases, norms, activations, pooling, resampling (``interpolate``, ``Upsample``,
  ``PixelShuffle``) and element-wise arithmetic: nothing (they are memory-bound, not MAC-bound).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.inference_mode()
def count_macs(model: nn.Module, *inputs: Any, per_sample: bool = False) -> int:
    """Total MACs of ``model(*inputs)`` in eval mode; with ``per_sample`` divided by the batch
    size (first dim of input 0)."""
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter:
            model(*inputs)
    finally:
        model.train(was_training)
    total = counter.get_total_flops() // 2
    if per_sample:
        batch = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 1
        return total // max(batch, 1)
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
