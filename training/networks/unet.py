"""The U-Net generator of pix2pix (Isola et al. 2017): encoder-decoder with skip connections."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.networks.common import check_input, conv_bias, init_weights, norm_layer


class UnetGenerator(nn.Module):
    """``num_downs`` stride-2 4x4 convs down (64-128-256-512-512-...), mirrored up with skips.
    ``num_downs=8`` takes 256 px to a 1x1 bottleneck (the paper's U-Net 256); inputs must be a
    multiple of ``2**num_downs`` (``multiple_of``). Dropout 0.5 on the decoder layers of the
    ``num_downs - 5`` middle 8*ngf blocks is the pix2pix noise source; it is off in eval mode (export)."""

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {num_downs}")
        self.multiple_of = 2**num_downs
        self.config = {"in_ch": in_ch, "out_ch": out_ch, "num_downs": num_downs, "ngf": ngf, "norm": norm}
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        # channels after each down step: ngf, 2ngf, 4ngf, 8ngf, 8ngf, ...
        chans = [ngf * min(2**i, 8) for i in range(num_downs)]

        self.downs = nn.ModuleList()
        prev = in_ch
        for i, ch in enumerate(chans):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(prev, ch, 4, stride=2, padding=1, bias=bias))
            # No norm on the first layer (raw image) nor on the 1x1 bottleneck (nothing to normalise).
            if 0 < i < num_downs - 1:
                layers.append(make_norm(ch))
            self.downs.append(nn.Sequential(*layers))
            prev = ch

        self.ups = nn.ModuleList()
        n_dropout = max(0, num_downs - 5)  # the reference's 8*ngf middle blocks (3 for U-Net 256)
        for i in reversed(range(num_downs)):
            in_up = chans[i] if i == num_downs - 1 else chans[i] * 2  # skip concat doubles channels
            layers = [nn.ReLU()]
            if i == 0:
                layers += [nn.ConvTranspose2d(in_up, out_ch, 4, stride=2, padding=1), nn.Tanh()]
            else:
                out_up = chans[i - 1]
                layers += [
                    nn.ConvTranspose2d(in_up, out_up, 4, stride=2, padding=1, bias=bias),
                    make_norm(out_up),
                ]
                depth_from_inner = num_downs - 1 - i
                if dropout > 0 and 1 <= depth_from_inner <= n_dropout:
                    layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.multiple_of)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[0](skips[-1])
        for up, skip in zip(self.ups[1:], reversed(skips[:-1]), strict=True):
            x = up(torch.cat([x, skip], dim=1))
        return x

    @property
    def architecture(self) -> str:
        c = self.config
        return f"UnetGenerator(downs={c['num_downs']}, ngf={c['ngf']}, norm={c['norm']})"
