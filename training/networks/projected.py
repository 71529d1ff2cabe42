"""A projected discriminator (Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021), patch-level.

The discriminator does not see pixels: it sees the frozen multi-scale features of a pretrained
network (:class:`training.networks.efficientnet_lite.Lite0Features`), which the recipe computes once
per image and shares with its feature losses. Each scale passes a fixed random 1x1 projection
(Projected GAN's cross-channel mixing: it spreads the pretrained features over all channels, so the
small head cannot latch on to a few of them) and then a small convolutional head that returns a
*map* of logits, one per feature-map position: a patch discriminator on every scale. Whole-image
heads overpower an image-to-image generator at once (projected-gan issue 71); patch heads judge
local texture, which is what a translator can change.

Only the heads train; the projections are buffers (part of the state, never optimised).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.networks.common import apply_spectral_norm


class ProjectedDiscriminator(nn.Module):
    """Patch logits on every feature scale: ``forward(features)`` returns a list of N x 1 x h x w maps."""

    def __init__(
        self,
        channels: tuple[int, ...],
        proj_channels: int = 64,
        ndf: int = 64,
        spectral_norm: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for i, c in enumerate(channels):
            # a fixed random 1x1 projection (Kaiming-uniform scale, as a fresh conv would have)
            bound = (3.0 / c) ** 0.5
            w = (torch.rand(proj_channels, c, 1, 1, generator=gen) * 2 - 1) * bound
            self.register_buffer(f"proj{i}", w)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(proj_channels, ndf, 3, 1, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(ndf, ndf, 3, 1, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(ndf, 1, 1),
            )
            for _ in channels
        )
        if spectral_norm:
            apply_spectral_norm(self.heads)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for i, (f, head) in enumerate(zip(features, self.heads, strict=True)):
            proj = getattr(self, f"proj{i}").to(f.dtype)
            out.append(head(nn.functional.conv2d(f, proj)))
        return out


__all__ = ["ProjectedDiscriminator"]
