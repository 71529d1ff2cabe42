"""A resolution-free translator: a CNN on a low-resolution copy, a guided filter to full resolution.

The design follows the Fast End-to-End Trainable Guided Filter (Wu et al., CVPR 2018): the network
runs on a fixed ``low_size`` x ``low_size`` copy of the image and predicts a *change* (a residual);
a guided filter (He et al., TPAMI 2013) fits, in every small window of the low-resolution copy, a
per-channel linear model ``change = a * image + b``; the coefficient maps ``a`` and ``b`` are
smooth, so they are resized to the full resolution and applied to the full-resolution image:

    out = x + A * x + B,    A, B = bilinear_resize(guided_filter(low(x), net(low(x))))

* **Identity by construction.** The network's last layer starts at zero, so the change is zero,
  ``a = b = 0`` and an untrained translator returns its input exactly. Training can only learn a
  change: it never has to learn to reproduce the photo.
* **Any resolution, near-constant time.** The CNN always sees ``low_size`` pixels a side; what
  grows with the photo is one resize of the input, two resizes of the coefficient maps and a
  multiply-add per pixel. Edges follow the full-resolution input because the change is linear in
  it within each window.
* **One ONNX graph.** The low-resolution copy (antialiased resize), the CNN, the box filters and the
  full-resolution step are all plain ops, so the exported file takes and returns the full image.

The low-resolution copy is square whatever the aspect ratio: the coefficients are resized back to
the input's own shape, so a 4:3 photo's coefficients are stretched, not its output. Optional
``detail``: the part of the network's change that the local linear model cannot express
(textures, brush strokes) is added on top, resized bilinearly from the low resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.networks.resnet import ResnetBlock, ResnetGenerator


def box_filter(x: Tensor, radius: int) -> Tensor:
    """Mean over a (2r+1)^2 window, windows clipped at the border (no padding counted)."""
    k = 2 * radius + 1
    return F.avg_pool2d(x, k, stride=1, padding=radius, count_include_pad=False)


def guided_filter_coefficients(
    guide: Tensor, target: Tensor, radius: int, eps: float, max_slope: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Per-channel guided filter (He et al.): ``a``, ``b`` with ``target ~ a * guide + b`` in every
    window, averaged over the windows covering each pixel. ``guide`` and ``target`` are N x C x H x W.

    ``max_slope`` > 0 bounds the slopes smoothly, ``a = m * tanh(a / m)``, and refits ``b`` to the
    window means. For a translator's change (``out = x + a * x + b``) a slope below -1 inverts the
    photo's local contrast, and channels that invert differently paint rainbow fringes along bright
    edges once the coefficients are resized to full resolution; with ``m < 1`` the gain ``1 + a``
    stays positive."""
    mean_i, mean_t = box_filter(guide, radius), box_filter(target, radius)
    cov = box_filter(guide * target, radius) - mean_i * mean_t
    var = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov / (var.clamp_min(0.0) + eps)
    if max_slope > 0:
        a = max_slope * torch.tanh(a / max_slope)
    b = mean_t - a * mean_i
    return box_filter(a, radius), box_filter(b, radius)


def _variance_preserving_init(net: ResnetGenerator, n_blocks: int) -> None:
    """He initialisation for a generator without normalisation layers: the ResNet's N(0, 0.02) init
    relies on instance norm to restore the scale, and without it the activations shrink layer by
    layer until the change is nothing. Each residual branch's last conv is scaled by 1/sqrt(blocks),
    so the sum of the blocks keeps the scale of its input (Fixup, Zhang et al., ICLR 2019)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for block in net.modules():
        if isinstance(block, ResnetBlock):
            last = [m for m in block.body if isinstance(m, nn.Conv2d)][-1]
            last.weight.data.mul_(n_blocks**-0.5)


class TextureHead(nn.Module):
    """A light convolutional branch at ``size`` x ``size`` that paints what a colour change cannot:
    snow grain, brush strokes. It sees the photo and the colour path's output (6 channels) and
    returns a residual image; its last conv starts at zero, so it adds nothing until trained.

    Residual blocks of 3 x 3 convs without downsampling paint texture at the working
    resolution's own pixel scale. ``dilated``: block i dilates by 2**i (1, 2, 4: a receptive field
    of 33 px at three blocks, but a gridding pattern of holes between the taps); plain:
    every block undilated (17 px at three blocks). Reflection padding keeps the borders free
    of a position signal."""

    def __init__(self, channels: int = 16, n_blocks: int = 3, dilated: bool = True) -> None:
        super().__init__()
        if channels < 1 or n_blocks < 0:
            raise ValueError(f"need channels >= 1 and n_blocks >= 0, got {channels}, {n_blocks}")
        conv = lambda i, o, d=1: nn.Conv2d(i, o, 3, padding=d, dilation=d, padding_mode="reflect")  # noqa: E731
        self.stem = nn.Sequential(conv(6, channels), nn.ReLU())
        dilation = [2**i if dilated else 1 for i in range(n_blocks)]
        self.blocks = nn.ModuleList(
            nn.Sequential(conv(channels, channels, d), nn.ReLU(), conv(channels, channels, d))
            for d in dilation
        )
        self.out = conv(channels, 3)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            block[-1].weight.data.mul_(max(n_blocks, 1) ** -0.5)
        nn.init.zeros_(self.out.weight)

    def forward(self, image: Tensor, colour: Tensor) -> Tensor:
        h = self.stem(torch.cat([image, colour], dim=1))
        for block in self.blocks:
            h = F.relu(h + block(h))
        return self.out(h)


class GuidedTranslator(nn.Module):
    """Translate an image of any size: ResNet change at ``low_size``, guided filter to full size.

    Input and output are N x 3 x H x W in [-1, 1]; any H, W >= 1 (``multiple_of`` is 1)."""

    multiple_of = 1

    def __init__(
        self,
        low_size: int = 128,
        ngf: int = 32,
        n_blocks: int = 6,
        norm: str = "instance",
        radius: int = 1,
        eps: float = 1e-3,
        detail: bool = False,
        upsample: str = "resize",
        max_slope: float = 0.0,
        texture: int = 0,
        texture_size: int = 256,
        padding: str = "zeros",
        texture_dilated: bool = True,
    ) -> None:
        super().__init__()
        if low_size % 4 or low_size < 8:
            raise ValueError(f"low_size must be a multiple of 4 and at least 8, got {low_size}")
        if radius < 1 or eps <= 0 or max_slope < 0:
            raise ValueError(
                f"need radius >= 1, eps > 0 and max_slope >= 0, got radius={radius}, eps={eps}, "
                f"max_slope={max_slope}"
            )
        self.low_size, self.radius, self.eps, self.detail = low_size, radius, float(eps), detail
        if texture < 0 or texture_size < 8:
            raise ValueError(f"need texture >= 0 and texture_size >= 8, got {texture}, {texture_size}")
        self.max_slope, self.texture_size = float(max_slope), texture_size
        self.config = {"low_size": low_size, "ngf": ngf, "n_blocks": n_blocks, "norm": norm,
                       "radius": radius, "eps": float(eps), "detail": detail, "upsample": upsample,
                       "max_slope": float(max_slope)}  # fmt: skip
        if texture:
            self.config.update(texture=texture, texture_size=texture_size)
            if not texture_dilated:
                self.config["texture_plain"] = True
        if padding != "zeros":
            self.config["padding"] = padding
        self.texture = TextureHead(texture, dilated=texture_dilated) if texture else None
        self.net = ResnetGenerator(
            3, 3, ngf=ngf, n_blocks=n_blocks, norm=norm, upsample=upsample, padding=padding
        )
        if norm == "none":
            _variance_preserving_init(self.net, n_blocks)
        head = self.net.model[-2]  # the last 7x7 conv; its tanh is dropped: the change is unbounded
        self.net.model[-1] = nn.Identity()
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def low(self, x: Tensor) -> Tensor:
        """The network's view: an antialiased square copy of ``x`` at ``low_size``."""
        s = self.low_size
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def change(self, lo: Tensor) -> Tensor:
        """The network's predicted change at low resolution (zero for an untrained translator)."""
        return self.net(lo)

    def coefficients(self, lo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The change at low resolution and its local linear model: ``delta``, ``a``, ``b`` with
        ``delta ~ a * lo + b``; ``1 + a`` is each channel's local gain in the output."""
        delta = self.change(lo)
        a, b = guided_filter_coefficients(lo, delta, self.radius, self.eps, self.max_slope)
        return delta, a, b

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        size = x.shape[-2:]
        lo = self.low(x)
        delta, a, b = self.coefficients(lo)
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        # B + R = resize(b) + resize(delta - (a * lo + b)) = resize(delta - a * lo): resizing is
        # linear, so the detail path costs no full-resolution tensor of its own
        offset = delta - a * lo if self.detail else b
        out = x + up(a) * x + up(offset)
        if self.texture is not None:
            t = (self.texture_size, self.texture_size)
            work = lambda v: F.interpolate(v, size=t, mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
            copy = lo if self.texture_size == self.low_size else work(x)  # the same resize
            out = out + up(self.texture(copy, work(out)))
        return out.clamp(-1.0, 1.0)

    @property
    def architecture(self) -> str:
        c = self.config
        extra = ", detail" if c["detail"] else ""
        if c.get("max_slope"):
            extra += f", slope <= {c['max_slope']:g}"
        if c.get("padding"):
            extra += f", {c['padding']} padding"
        if c.get("texture"):
            plain = " plain" if c.get("texture_plain") else ""
            extra += f", texture head {c['texture']} ch{plain} at {c['texture_size']} px"
        return (
            f"GuidedTranslator(low_size={c['low_size']}, ResNet ngf={c['ngf']}, blocks={c['n_blocks']}, "
            f"norm={c['norm']}, guided filter r={c['radius']} eps={c['eps']:g}{extra})"
        )


__all__ = ["GuidedTranslator", "TextureHead", "box_filter", "guided_filter_coefficients"]
