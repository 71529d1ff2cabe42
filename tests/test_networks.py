"""Generators keep H x W on their multiple, refuse other sizes clearly, and export to ONNX."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from training.networks import (
    PatchDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    check_size,
    count_parameters,
    init_weights,
    norm_layer,
)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("hw", [(32, 32), (36, 44), (64, 48)])
def test_resnet_generator_keeps_size(norm: str, hw: tuple[int, int]) -> None:
    net = ResnetGenerator(3, 3, ngf=8, n_blocks=2, norm=norm)
    assert net.multiple_of == 4
    out = net(torch.randn(2, 3, *hw))
    assert out.shape == (2, 3, *hw)
    assert out.abs().max() <= 1.0  # tanh range


def test_resnet_block_count_and_reference_size() -> None:
    six, nine = ResnetGenerator(ngf=32, n_blocks=6), ResnetGenerator(ngf=32, n_blocks=9)
    assert count_parameters(nine) > count_parameters(six)
    # the reference CycleGAN generator (ngf 64, 9 blocks, instance norm) has 11,378,179 parameters
    assert count_parameters(ResnetGenerator(ngf=64, n_blocks=9)) == 11_378_179


def test_resize_upsampling_has_no_checkerboard_at_init_and_keeps_old_checkpoints_loadable() -> None:
    torch.manual_seed(0)
    resize = ResnetGenerator(ngf=8, n_blocks=1, norm="none", upsample="resize")
    assert resize(torch.randn(1, 3, 36, 44)).shape == (1, 3, 36, 44)
    assert "upsample=resize" in resize.architecture

    def parity_gap(net: torch.nn.Module) -> float:
        # the upsampling half alone, on a constant feature map: any difference between even and odd
        # output pixels is the checkerboard a transposed conv with kernel 3, stride 2 makes
        layers = list(net.model.children())
        last_block = max(i for i, m in enumerate(layers) if type(m).__name__ == "ResnetBlock")
        ups = torch.nn.Sequential(*layers[last_block + 1 : -3])  # up to the final pad, conv, tanh
        with torch.no_grad():
            y = ups(torch.ones(1, 32, 8, 8))[..., 4:-4, 4:-4]
        return float((y[..., ::2, ::2] - y[..., 1::2, 1::2]).abs().mean())

    transposed = ResnetGenerator(ngf=8, n_blocks=1, norm="none")
    assert parity_gap(resize) < 1e-6 < parity_gap(transposed)
    # the default layout is unchanged: checkpoints of shipped runs still load
    keys = list(transposed.state_dict())
    assert keys[-6:] == ["model.11.weight", "model.11.bias", "model.14.weight", "model.14.bias",
                         "model.18.weight", "model.18.bias"]  # fmt: skip
    with pytest.raises(ValueError, match="upsample"):
        ResnetGenerator(upsample="bilinear")


@pytest.mark.parametrize("downs,hw", [(5, (32, 64)), (6, (64, 64)), (4, (48, 32))])
def test_unet_generator_keeps_size(downs: int, hw: tuple[int, int]) -> None:
    net = UnetGenerator(3, 3, num_downs=downs, ngf=8)
    assert net.multiple_of == 2**downs
    assert net(torch.randn(1, 3, *hw)).shape == (1, 3, *hw)


def test_unet_dropout_follows_the_reference() -> None:
    def dropouts(net):
        return sum(isinstance(m, torch.nn.Dropout) for m in net.modules())

    assert dropouts(UnetGenerator(num_downs=8, ngf=8)) == 3  # U-Net 256: three 8*ngf middle blocks
    assert dropouts(UnetGenerator(num_downs=5, ngf=8)) == 0
    assert dropouts(UnetGenerator(num_downs=8, ngf=8, dropout=0)) == 0


def test_wrong_sizes_give_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"30x32 .* multiple of 4.*32x32"):
        ResnetGenerator(ngf=4, n_blocks=1)(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        UnetGenerator(num_downs=5, ngf=4)(torch.randn(1, 3, 48, 64))
    check_size(256, 512, 256)  # fine: no exception
    with pytest.raises(ValueError, match="pad"):
        check_size(250, 256, 4)


def test_patch_discriminator_is_70x70_and_fully_convolutional() -> None:
    d = PatchDiscriminator(3, ndf=8)
    assert d.receptive_field == 70
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert d(torch.randn(1, 3, 32, 48)).shape == (1, 1, 2, 4)
    assert count_parameters(PatchDiscriminator(3, ndf=64)) == 2_764_737  # the reference PatchGAN


def test_spectral_norm_bounds_the_weights() -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator(3, ndf=8, norm="none", spectral_norm=True)
    x = torch.randn(1, 3, 32, 32)
    for _ in range(20):  # power iterations converge in training mode
        d(x)
    d.eval()
    conv = d.model[0]
    sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=0.05)


def test_init_and_norm_choices() -> None:
    torch.manual_seed(0)
    net = init_weights(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.BatchNorm2d(64)))
    assert net[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert net[0].bias.abs().max().item() == 0.0
    assert net[1].weight.mean().item() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="instance, batch, none"):
        norm_layer("group")


@pytest.mark.parametrize(
    "make",
    [lambda: ResnetGenerator(ngf=8, n_blocks=2), lambda: UnetGenerator(num_downs=5, ngf=8)],
    ids=["resnet", "unet"],
)
def test_onnx_export_with_dynamic_sizes(make) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = make().eval()
    buf = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 64, 64),),
        buf,
        input_names=["image"],
        output_names=["output"],
        dynamic_axes={"image": axes, "output": axes},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 32)]:  # other batch and spatial sizes than traced
        x = torch.randn(*shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = net(x).numpy()
        assert out.shape == shape
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_pixel_norm_pools_nothing_over_space() -> None:
    """Each pixel's features get unit RMS across channels; a spike in one place leaves every other
    pixel's output unchanged (instance norm would rescale the whole map)."""
    torch.manual_seed(0)
    norm = norm_layer("pixel")(8)
    x = torch.randn(2, 8, 5, 6)
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(2, 5, 6), atol=1e-5, rtol=0)
    spiked = x.clone()
    spiked[:, :, 0, 0] *= 100.0
    torch.testing.assert_close(norm(spiked)[..., 1:, :], y[..., 1:, :])
    inorm = norm_layer("instance")(8)
    assert not torch.allclose(inorm(spiked)[..., 1:, :], inorm(x)[..., 1:, :])
    net = ResnetGenerator(ngf=8, n_blocks=1, norm="pixel")
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
