"""The ResNet generator of CycleGAN (Johnson et al. 2016; Zhu et al. 2017), reflection padded."""

from __future__ import annotations

from torch import Tensor, nn

from training.networks.common import check_input, conv_bias, init_weights, norm_layer


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            make_norm(channels),
            nn.ReLU(),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), make_norm(channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


UPSAMPLING = ("transposed", "resize")


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamples, ``n_blocks`` residual blocks at 4*ngf channels, two
    x2 upsamples, c7s1-out, tanh. 9 blocks for 256 px in the paper, 6 for 128 px; a smaller
    ``ngf`` gives a compact generator. Output in [-1, 1], same HxW as the input, which must be a
    multiple of 4 (``multiple_of``).

    ``upsample``: ``transposed`` (the paper's 3x3 stride-2 transposed conv) or ``resize`` (nearest
    x2 then a 3x3 conv; Odena et al., 2016). A 3x3 kernel at stride 2 overlaps unevenly, so the
    transposed form starts with a checkerboard pattern that training must learn away — with a
    short (CPU) budget it stays visible and costs FID; resize-convolution has none by construction.

    ``padding`` of the stride-2 downsampling convs: ``zeros`` (the paper's) or ``reflect``. Zero
    padding tells the network where the image's borders are, and a translator can learn to paint
    by position (a sky-blue band along every photo's top edge); with ``reflect`` (and ``resize``
    upsampling) every layer is reflection padded, so an image of one colour gets one colour back.
    """

    n_downsampling = 2

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: float = 0.0,
        upsample: str = "transposed",
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be zeros or reflect, got '{padding}'")
        if n_blocks < 0 or ngf < 1:
            raise ValueError(f"need ngf >= 1 and n_blocks >= 0, got ngf={ngf}, n_blocks={n_blocks}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLING)}, got '{upsample}'")
        self.multiple_of = 2**self.n_downsampling
        self.config = {"in_ch": in_ch, "out_ch": out_ch, "ngf": ngf, "n_blocks": n_blocks, "norm": norm}
        if upsample != "transposed":
            self.config["upsample"] = upsample
        if padding != "zeros":
            self.config["padding"] = padding
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7, bias=bias),
            make_norm(ngf),
            nn.ReLU(),
        ]
        ch = ngf
        for _ in range(self.n_downsampling):
            down = nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias, padding_mode=padding)
            layers += [down, make_norm(ch * 2), nn.ReLU()]
            ch *= 2
        layers += [ResnetBlock(ch, norm, dropout) for _ in range(n_blocks)]
        for _ in range(self.n_downsampling):
            if upsample == "resize":
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.ReflectionPad2d(1),
                    nn.Conv2d(ch, ch // 2, 3, bias=bias),
                ]
            else:
                layers += [
                    nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias)
                ]
            layers += [make_norm(ch // 2), nn.ReLU()]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.multiple_of)
        return self.model(x)

    @property
    def architecture(self) -> str:
        c = self.config
        up = f", upsample={c['upsample']}" if "upsample" in c else ""
        return f"ResnetGenerator(ngf={c['ngf']}, blocks={c['n_blocks']}, norm={c['norm']}{up})"
