"""A style-based class-conditional generator (StyleGAN2's design, sized for 28/32 px images).

* **Mapping network**: ``(z, label) -> w``. ``z`` and a class embedding are each normalised to unit
  second moment and concatenated (as StyleGAN2-ADA conditions its mapping), then a few fully
  connected layers with a 100x lower learning rate (equalised learning rate, ``lr_mul``).
* **Synthesis network**: a learned constant of S/4 x S/4 (7x7 for 28 px), then modulated and
  demodulated 3x3 convolutions (StyleGAN2), one per **style layer**: one at S/4, two at S/2 and two
  at S. Each layer adds per-pixel noise scaled by a learned strength. The skip design: every
  resolution has a to-image layer, summed after upsampling, so no progressive growing is needed.
* **Per-class average of w** (``w_avg``): the **truncation trick** moves w towards the average of its
  own class, ``w_avg[label] + psi * (w - w_avg[label])``: psi = 1 is the model as trained, psi = 0
  the class's average image. Training keeps it as a running average of the batch's w;
  :meth:`StyleGenerator.recompute_w_avg` sets it exactly (the training recipe does so for the EMA
  weights before they are sampled or saved).
* **Style mixing**: the style layers before ``mix_layer`` take their style from ``z``, the layers
  from ``mix_layer`` on from a second latent ``z2`` (coarse structure from one, strokes from the
  other). Training mixes a share of its batches (the regularisation of StyleGAN); ``blend`` moves the
  first latent's w linearly towards ``z2``'s, which interpolates between two samples in W.

Modulation scales the input activations and demodulation the outputs, per sample (StyleGAN2's
non-fused form), so the convolution weights are shared by the batch: the exported graph has a
dynamic batch and each sample depends only on its own inputs. In eval mode the noise is a fixed
buffer per layer, so the same inputs give the same image (torch, ONNX and the service agree).

Tensor contract (export): ``G(z, label, psi, z2, mix_layer, blend)`` with ``z``/``z2`` N x latent
float32, ``label`` and ``mix_layer`` N int64 (``mix_layer`` in 0..``num_layers``; ``num_layers``: no
mixing), ``psi`` and ``blend`` N float32 in [0, 1] gives N x C x S x S in [-1, 1]. ``G(z, label)``
alone is the untruncated, unmixed sample.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.networks.conditional import OUTPUT_SIZES, _exporting, check_labels

NOISE_SEED = 20_240_601  # the fixed eval-mode noise of every layer derives from this seed
STYLE_LAYERS = 5  # style layers of the synthesis network: one at S/4, two at S/2, two at S


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit root mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """A linear layer with an equalised learning rate (Karras et al., 2018): weights stored at unit
    variance and scaled at run time, ``lr_mul`` slowing the layer's effective learning rate."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(cin)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)


class MappingNetwork(nn.Module):
    """(z, label) -> w: normalised z and class embedding, concatenated, through ``layers`` FC layers."""

    def __init__(
        self, num_classes: int, latent_dim: int, w_dim: int, embed_dim: int, layers: int, lr_mul: float = 0.01
    ) -> None:
        super().__init__()
        self.embed = EqualLinear(num_classes, embed_dim)  # one-hot -> embedding, as StyleGAN2-ADA
        self.num_classes = num_classes
        dims = [latent_dim + embed_dim] + [w_dim] * layers
        self.fcs = nn.ModuleList(EqualLinear(a, b, lr_mul=lr_mul) for a, b in itertools.pairwise(dims))

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        onehot = F.one_hot(label, self.num_classes).to(z.dtype)
        h = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(onehot))], dim=1)
        for fc in self.fcs:
            h = F.leaky_relu(fc(h), 0.2) * math.sqrt(2.0)
        return h


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled by a style from w and whose outputs are
    demodulated to unit expected variance (StyleGAN2, eqs. 1-3), per sample."""

    def __init__(self, cin: int, cout: int, w_dim: int, kernel: int = 3, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)  # styles start at 1: plain convolution
        self.weight_gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2
        self.demodulate = demodulate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        style = self.affine(w)  # N x cin
        weight = self.weight * self.weight_gain
        y = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, kh, kw) of (weight * style)^2, for every output channel of every sample
            energy = style.square() @ weight.square().sum(dim=(2, 3)).t()  # N x cout
            y = y * (energy + 1e-8).rsqrt()[:, :, None, None]
        return y


class StyleLayer(nn.Module):
    """Modulated 3x3 conv (after an optional x2 upsampling), noise, bias, leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, upsample: bool, index: int) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(cin, cout, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))
        g = torch.Generator().manual_seed(NOISE_SEED + index)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=g))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if self.training:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype)
        x = x + noise * self.noise_strength + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class ToImage(nn.Module):
    """Modulated 1x1 conv to the output channels, without demodulation (StyleGAN2's toRGB)."""

    def __init__(self, cin: int, out_ch: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(cin, out_ch, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """(z, label [, psi, z2, mix_layer, blend]) -> image: mapping network, then a synthesis network
    of ``num_layers`` (5) style layers from a learned S/4 constant with skip to-image outputs."""

    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 128,
        out_ch: int = 1,
        output_size: int = 28,
        ngf: int = 64,
        embed_dim: int = 64,
        w_dim: int = 128,
        mapping_layers: int = 4,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        if output_size not in OUTPUT_SIZES:
            raise ValueError(f"output_size must be one of {OUTPUT_SIZES}, got {output_size}")
        if num_classes < 1:
            raise ValueError("a conditional generator needs at least one class")
        self.num_classes, self.latent_dim, self.w_dim = num_classes, latent_dim, w_dim
        self.out_ch, self.output_size = out_ch, output_size
        self.w_avg_beta = w_avg_beta
        self.mapping = MappingNetwork(num_classes, latent_dim, w_dim, embed_dim, mapping_layers)
        base = output_size // 4
        widths = {base: ngf * 4, base * 2: ngf * 2, base * 4: ngf}
        self.const = nn.Parameter(torch.randn(1, widths[base], base, base))
        layers, to_image, cin = [], [], widths[base]
        for res, cout in widths.items():
            first = res == base
            for i in range(1 if first else 2):
                layers.append(
                    StyleLayer(cin, cout, w_dim, res, upsample=not first and i == 0, index=len(layers))
                )
                cin = cout
            to_image.append(ToImage(cout, out_ch, w_dim))
        self.layers = nn.ModuleList(layers)
        self.to_image = nn.ModuleList(to_image)
        # the last style layer of each resolution also styles its to-image layer
        self.image_layer = [
            i for i, layer in enumerate(layers) if i + 1 == len(layers) or layers[i + 1].upsample
        ]
        self.register_buffer("w_avg", torch.zeros(num_classes, w_dim))
        assert len(layers) == STYLE_LAYERS, "STYLE_LAYERS names the synthesis network's layer count"

    @property
    def num_layers(self) -> int:
        """Style layers: ``mix_layer`` is in 0..num_layers (num_layers: no mixing)."""
        return len(self.layers)

    # -- mapping and the styles of every layer -------------------------------------------------
    def _check_inputs(self, z: Tensor, label: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be N x {self.latent_dim}, got {tuple(z.shape)}")
        if label.shape != (z.shape[0],):
            raise ValueError(
                f"label must be a vector of N={z.shape[0]} class indices, got {tuple(label.shape)}"
            )
        if not (self.training and label.is_cuda):  # training labels come from the data: skip the sync
            check_labels(label, self.num_classes)

    def truncate(self, w: Tensor, label: Tensor, psi: Tensor | None) -> Tensor:
        """``w`` moved towards its class's average: ``w_avg[label] + psi * (w - w_avg[label])``."""
        if psi is None:
            return w
        avg = self.w_avg[label].to(w.dtype)
        return avg + psi.to(w.dtype)[:, None] * (w - avg)

    def styles(
        self,
        z: Tensor,
        label: Tensor,
        psi: Tensor | None = None,
        z2: Tensor | None = None,
        mix_layer: Tensor | None = None,
        blend: Tensor | None = None,
    ) -> Tensor:
        """The w of every style layer, N x num_layers x w_dim (see the module docstring)."""
        label = label.long()
        w = self.mapping(z, label)
        if self.training and not _exporting():
            self._track_w_avg(w.detach(), label)
        w = self.truncate(w, label, psi)
        ws = w[:, None, :].expand(-1, self.num_layers, -1)
        if z2 is None:
            return ws
        w2 = self.truncate(self.mapping(z2, label), label, psi)
        if blend is not None:
            ws = torch.lerp(w, w2, blend.to(w.dtype)[:, None])[:, None, :].expand(-1, self.num_layers, -1)
        if mix_layer is None:
            return ws
        index = torch.arange(self.num_layers, device=z.device)
        takes_over = (index[None, :] >= mix_layer.long()[:, None])[:, :, None]  # N x L x 1
        return torch.where(takes_over, w2[:, None, :], ws)

    def _track_w_avg(self, w: Tensor, label: Tensor) -> None:
        """Running per-class average of w over the training batches (classes absent keep theirs)."""
        with torch.no_grad():
            sums = torch.zeros_like(self.w_avg).index_add_(0, label, w.float())
            counts = torch.bincount(label, minlength=self.num_classes).to(sums.dtype)[:, None]
            seen = counts > 0
            mean = sums / counts.clamp(min=1)
            self.w_avg.copy_(torch.where(seen, torch.lerp(mean, self.w_avg, self.w_avg_beta), self.w_avg))

    @torch.no_grad()
    def recompute_w_avg(self, samples_per_class: int = 2048, seed: int = 0) -> None:
        """Set ``w_avg`` to the mean w of ``samples_per_class`` seeded latents of every class."""
        g = torch.Generator().manual_seed(seed)
        dev = self.w_avg.device
        for c in range(self.num_classes):
            z = torch.randn(samples_per_class, self.latent_dim, generator=g).to(dev)
            label = torch.full((samples_per_class,), c, dtype=torch.long, device=dev)
            self.w_avg[c] = self.mapping(z, label).float().mean(dim=0)

    # -- synthesis ------------------------------------------------------------------------------
    def synthesis(self, ws: Tensor) -> Tensor:
        """N x num_layers x w_dim styles -> N x C x S x S in [-1, 1]."""
        x = self.const.to(ws.dtype).repeat(ws.shape[0], 1, 1, 1)
        image = None
        outputs = dict(zip(self.image_layer, self.to_image, strict=True))
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
            if i in outputs:
                y = outputs[i](x, ws[:, i])
                if image is not None:
                    image = F.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False)
                image = y if image is None else image + y
        return torch.tanh(image)

    def forward(
        self,
        z: Tensor,
        label: Tensor,
        psi: Tensor | None = None,
        z2: Tensor | None = None,
        mix_layer: Tensor | None = None,
        blend: Tensor | None = None,
    ) -> Tensor:
        if not _exporting():
            self._check_inputs(z, label)
            if z2 is not None and z2.shape != z.shape:
                raise ValueError(f"z2 must have the shape of z, {tuple(z.shape)}, got {tuple(z2.shape)}")
        return self.synthesis(self.styles(z, label, psi, z2, mix_layer, blend))
