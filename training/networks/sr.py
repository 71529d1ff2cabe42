"""Super-resolution networks: a compact residual upscaler and a spectral-norm discriminator.

:class:`CompactSRNet` follows Real-ESRGAN's SRVGG-compact design (Wang et al., 2021): a plain stack
of 3x3 convs with PReLU at LR resolution, one conv to ``out_ch * scale**2`` channels and a single
PixelShuffle, plus the nearest-upsampled input as a global residual. All the work happens at LR
resolution and there are no attention/norm layers, so it is fast on a CPU, fully convolutional
(any H, W: ``multiple_of`` 1) and exports to ONNX with dynamic H and W. Values are in [0, 1]
(BasicSR's convention); in eval mode (export, serving) the output is clamped to [0, 1] so the
tensor contract holds, while training sees the raw output (no dead gradients at the bounds).

:class:`SRDiscriminator` is VGG-style (conv-LReLU pairs, stride-2 every second conv) but fully
convolutional: it ends in a 1-channel conv, so it judges patches of any size that is a multiple of
16 and returns a logit map. Spectral norm replaces batch norm (stable with the relativistic loss and
small batches). ``forward(x, return_features=True)`` also returns the intermediate activations, for
the optional feature-matching loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.networks.common import apply_spectral_norm

SCALES = (2, 3, 4)


class CompactSRNet(nn.Module):
    """SRVGG-compact: ``num_conv`` 3x3 convs of ``num_feat`` channels at LR size + PixelShuffle."""

    def __init__(
        self, scale: int = 4, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_conv: int = 16
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale}")
        if in_ch != out_ch:
            raise ValueError("the global residual needs in_ch == out_ch")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_ch, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers += [nn.Conv2d(num_feat, out_ch * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)
        # He init for PReLU (slope 0.25) keeps the activations' scale through the plain stack;
        # PyTorch's default init shrinks them ~10x within a few layers, and Adam then barely moves
        # the body (its gradients fall under eps) — the loss sat at the nearest-upsampling level.
        for m in layers:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        # Start as "nearest upsampling + a small correction": the last conv is scaled down so the
        # first steps do not fight a random residual.
        last = layers[-2]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            last.weight.mul_(0.01)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out if self.training else out.clamp(0.0, 1.0)


class SRDiscriminator(nn.Module):
    """VGG-style, fully convolutional, spectral-norm discriminator on HR patches (multiple of 16)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, spectral_norm: bool = True) -> None:
        super().__init__()
        chans = [ndf, ndf * 2, ndf * 4, ndf * 8]

        def lrelu() -> nn.Module:
            return nn.LeakyReLU(0.2, inplace=True)

        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_ch, ndf, 3, padding=1), lrelu())]
        cin = ndf
        for c in chans:
            # conv at this resolution, then a stride-2 conv: /16 after the four blocks
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, c, 3, padding=1), lrelu(), nn.Conv2d(c, c, 4, stride=2, padding=1), lrelu()
                )
            )
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, 1, 3, padding=1)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats = []
        h = x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        logits = self.head(h)
        return (logits, feats) if return_features else logits
