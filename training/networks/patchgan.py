"""The PatchGAN discriminator (Isola et al. 2017): a fully convolutional real/fake map."""

from __future__ import annotations

from torch import Tensor, nn

from training.networks.common import apply_spectral_norm, conv_bias, init_weights, norm_layer


class PatchDiscriminator(nn.Module):
    """C64-C128-C256-C512 then a 1-channel conv: each output logit sees a 70x70 patch with
    ``n_layers=3`` (``receptive_field``). Returns raw logits N x 1 x H' x W' for any input size
    of at least ~2**n_layers * 4 px. ``spectral_norm`` wraps every conv (then ``norm`` is usually
    ``none``)."""

    def __init__(
        self,
        in_ch: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = ndf
        for n in range(1, n_layers + 1):
            nxt = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps resolution
            layers += [
                nn.Conv2d(ch, nxt, 4, stride=stride, padding=1, bias=bias),
                make_norm(nxt),
                nn.LeakyReLU(0.2),
            ]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.n_layers = n_layers
        init_weights(self)
        if spectral_norm:
            apply_spectral_norm(self)

    @property
    def receptive_field(self) -> int:
        # two stride-1 4x4 convs at the end, n_layers stride-2 4x4 convs before them
        rf = 1
        for _ in range(2):
            rf += 3
        for _ in range(self.n_layers):
            rf = rf * 2 + 2
        return rf

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
