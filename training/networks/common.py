"""Building blocks shared by the networks: normalisation by name, weight init, the size rule."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

NORMS = ("instance", "batch", "none", "pixel")


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    """A factory ``channels -> nn.Module`` for ``instance`` (no affine, no running stats: the same
    computation in training and inference, and ONNX-friendly), ``batch`` or ``none``."""
    if name == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if name == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if name == "none":
        return lambda channels: nn.Identity()
    if name == "pixel":
        return lambda channels: PixelNorm()
    raise ValueError(f"unknown norm '{name}': choose one of {', '.join(NORMS)}")


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit RMS across channels (Karras et al., ICLR 2018).

    Unlike instance norm it pools nothing over space, so a generator gains nothing by planting a
    strong local spike to steer the statistics of a whole feature map: the cause of the "droplet"
    blobs of instance-normalised generators (Karras et al., CVPR 2020)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def conv_bias(norm: str) -> bool:
    # BatchNorm's affine shift makes a conv bias redundant; instance norm here has no affine part.
    return norm != "batch"


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """N(0, std) for conv/linear weights, zero biases; batch-norm scale N(1, std) (DCGAN/pix2pix)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif (
            isinstance(m, nn.BatchNorm2d) and m.affine
        ):  # affine=False (e.g. class-conditional BN) has no scale
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return net


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., 2018) on every conv/linear weight, in place."""
    for m in list(net.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(m)
    return net


def check_size(height: int, width: int, multiple_of: int) -> None:
    """Raise a ValueError saying what to do when H or W is not a multiple of ``multiple_of``."""
    if height % multiple_of or width % multiple_of:
        up = lambda v: -(-v // multiple_of) * multiple_of  # noqa: E731
        raise ValueError(
            f"input size {height}x{width} (HxW) is not a multiple of {multiple_of}, which this network "
            f"needs: pad (reflect) or crop to e.g. {up(height)}x{up(width)} first"
        )


def _exporting() -> bool:
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def check_input(x: torch.Tensor, multiple_of: int) -> None:
    """Eager-mode guard in ``forward``; skipped while tracing/exporting, where sizes are symbolic."""
    if not _exporting():
        check_size(int(x.shape[-2]), int(x.shape[-1]), multiple_of)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
