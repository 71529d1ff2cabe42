"""Class-conditional generation: a DCGAN-style conditional generator, a projection discriminator,
and the small classifier that judges conditional samples.

Why a **projection discriminator** (Miyato & Koyama, ICLR 2018) rather than an AC-GAN auxiliary
classifier (Odena et al., 2017): the projection D scores ``psi(phi(x)) + <embed(y), phi(x)>``, i.e.
the label enters as an inner product with the image features, which is the form the optimal
discriminator of a conditional model takes (the log density ratio decomposes that way). AC-GAN
instead adds a classification loss that rewards *easily classified* samples, so it is known to
collapse intra-class diversity as the number of classes grows, and its two objectives need
balancing. The projection form has no extra loss, pairs naturally with spectral normalisation
and the hinge loss (SN-GAN, SAGAN, BigGAN all use exactly that), and costs one embedding table.

The generator follows the same line: the label is concatenated to the noise *and* modulates every
batch norm (conditional batch norm, as in the projection-D paper's generator), which makes the
class signal hard to ignore at every resolution.

Tensor contract (export): ``G(z, label)`` with ``z`` N x latent_dim float32 and ``label`` N int64
gives N x C x S x S in [-1, 1] (tanh). In eval mode batch norm uses its running statistics, so a
sample depends only on its own (z, label): same z and label -> same image, whatever the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.networks.common import apply_spectral_norm, init_weights

OUTPUT_SIZES = (28, 32)


def _exporting() -> bool:
    # Value checks need concrete tensors; under tracing/ONNX export the values are symbolic.
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def check_labels(label: Tensor, num_classes: int) -> None:
    """Raise a ValueError naming the valid range when a label is outside ``0..num_classes-1``.
    Skipped while tracing/exporting: ONNX cannot check it, the service does."""
    if _exporting():
        return
    if label.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"labels must be integer class indices, got dtype {label.dtype}")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        bad = label[(label < 0) | (label >= num_classes)].unique().tolist()
        raise ValueError(
            f"label(s) {bad} out of range: this model has {num_classes} classes, use 0..{num_classes - 1}"
        )


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are looked up per class (de Vries et al., 2017)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        g = self.gamma(label)[:, :, None, None]
        b = self.beta(label)[:, :, None, None]
        return self.bn(x) * g + b


class _UpBlock(nn.Module):
    """x2 transposed conv -> conditional BN -> ReLU."""

    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
        self.norm = ConditionalBatchNorm2d(cout, num_classes)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x), label))


class ConditionalGenerator(nn.Module):
    """(z, label) -> image. Noise and a class embedding are concatenated, projected to
    ``ngf*4`` x S/4 x S/4 (7x7 for 28 px, 8x8 for 32 px), then two x2 transposed convs, a 3x3 conv
    and tanh. ~3M parameters with the defaults (most in the projection): small enough to sample on a CPU."""

    def __init__(
        self,
        num_classes: int,
        latent_dim: int = 128,
        out_ch: int = 1,
        output_size: int = 28,
        ngf: int = 64,
        embed_dim: int = 64,
    ) -> None:
        super().__init__()
        if output_size not in OUTPUT_SIZES:
            raise ValueError(f"output_size must be one of {OUTPUT_SIZES}, got {output_size}")
        if num_classes < 1:
            raise ValueError("a conditional generator needs at least one class")
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.out_ch, self.output_size = out_ch, output_size
        self.base = output_size // 4
        c0 = ngf * 4
        self.embed = nn.Embedding(num_classes, embed_dim)
        # DCGAN's projection: a transposed conv from 1x1 to base x base (= a linear layer that
        # keeps a static channel count, which ONNX shape inference needs for the batch norm)
        self.project = nn.ConvTranspose2d(latent_dim + embed_dim, c0, self.base, bias=False)
        self.norm0 = ConditionalBatchNorm2d(c0, num_classes)
        self.up1 = _UpBlock(c0, ngf * 2, num_classes)
        self.up2 = _UpBlock(ngf * 2, ngf, num_classes)
        self.to_image = nn.Conv2d(ngf, out_ch, 3, padding=1)
        for m in self.modules():  # DCGAN init; conditional BN keeps its identity start
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)  # the label must be as loud as the noise

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        if not _exporting():
            if z.dim() != 2 or z.shape[1] != self.latent_dim:
                raise ValueError(f"z must be N x {self.latent_dim}, got {tuple(z.shape)}")
            if label.shape != (z.shape[0],):
                raise ValueError(
                    f"label must be a vector of N={z.shape[0]} class indices, got {tuple(label.shape)}"
                )
            if not (self.training and label.is_cuda):  # training labels come from the data: skip the sync
                check_labels(label, self.num_classes)
        label = label.long()
        h = self.project(torch.cat([z, self.embed(label)], dim=1)[:, :, None, None])
        h = torch.relu(self.norm0(h, label))
        h = self.up2(self.up1(h, label), label)
        return torch.tanh(self.to_image(h))


class MinibatchStdDev(nn.Module):
    """Append the mean per-feature standard deviation across a group of samples as one extra
    channel (Karras et al., 2018): a cheap way for D to notice a batch of look-alike fakes.
    Groups of ``group_size`` (or the whole batch when it does not divide), so the feature of one
    sample depends only on its group."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.group_size if n % self.group_size == 0 else n
        y = x.reshape(g, -1, c, h, w).float()  # G x M x C x H x W, M groups
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # M x C x H x W
        feat = std.mean(dim=(1, 2, 3)).to(x.dtype)  # M
        feat = feat.repeat(g)[:, None, None, None].expand(n, 1, h, w)
        return torch.cat([x, feat], dim=1)


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018) on 28/32 px images.

    phi: three stride-2 convs (LeakyReLU 0.1, no normalisation: spectral norm does that job)
    then global sum pooling. Raw logits of shape N. Spectral norm on every weight, including the
    class embedding, as in the paper."""

    def __init__(
        self,
        num_classes: int,
        in_ch: int = 1,
        ndf: int = 64,
        spectral_norm: bool = True,
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        act = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, ndf, 3, padding=1),
            act(),
            nn.Conv2d(ndf, ndf, 4, stride=2, padding=1),  # 14 / 16
            act(),
            nn.Conv2d(ndf, ndf * 2, 3, padding=1),
            act(),
            nn.Conv2d(ndf * 2, ndf * 2, 4, stride=2, padding=1),  # 7 / 8
            act(),
            nn.Conv2d(ndf * 2, ndf * 4, 3, padding=1),
            act(),
        )
        self.mbstd = MinibatchStdDev() if minibatch_std else None
        self.head = nn.Sequential(
            nn.Conv2d(ndf * 4 + (1 if minibatch_std else 0), ndf * 4, 4, stride=2, padding=1),  # 3 / 4
            act(),
        )
        self.linear = nn.Linear(ndf * 4, 1)
        self.embed = nn.Embedding(num_classes, ndf * 4)
        init_weights(self)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral_norm:
            apply_spectral_norm(self)
            nn.utils.parametrizations.spectral_norm(self.embed)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        if not (self.training and label.is_cuda):
            check_labels(label, self.num_classes)
        h = self.features(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        phi = self.head(h).sum(dim=(2, 3))  # global sum pooling, N x F
        return self.linear(phi).squeeze(1) + (self.embed(label.long()) * phi).sum(dim=1)


class SampleClassifier(nn.Module):
    """A small CNN that classifies 28/32 px images in [-1, 1]: the judge of conditional samples
    (the fraction of samples of class y it calls y). Three conv-BN-ReLU stages and a linear head."""

    def __init__(self, num_classes: int, in_ch: int = 1, width: int = 32, dropout: float = 0.25) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.num_classes = num_classes
        self.features = nn.Sequential(
            *stage(in_ch, width), *stage(width, width * 2), *stage(width * 2, width * 4)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * 4, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, N x num_classes."""
        return self.head(self.features(x))
