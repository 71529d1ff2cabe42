"""The resolution-free translator: identity when untrained, consistent across sizes, one ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.networks.guided import GuidedTranslator, TextureHead, box_filter, guided_filter_coefficients

FIXTURE_PHOTO = Path(__file__).parent / "fixtures" / "yosemite" / "trainA"


def _photo(h: int, w: int) -> torch.Tensor:
    """A real photo from the fixtures, resized to h x w, in [-1, 1]."""
    from PIL import Image

    path = sorted(FIXTURE_PHOTO.iterdir())[0]
    img = Image.open(path).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1).unsqueeze(0)


def _trained_like(seed: int = 0, std: float = 0.05, **kwargs) -> GuidedTranslator:
    """A translator whose change is not zero: every weight random, as after some training."""
    torch.manual_seed(seed)
    net = GuidedTranslator(low_size=kwargs.pop("low_size", 32), ngf=8, n_blocks=2, **kwargs).eval()
    with torch.no_grad():
        heads = [net.net.model[-2]] + ([net.texture.out] if net.texture is not None else [])
        for head in heads:
            head.weight.normal_(0.0, std)
            head.bias.normal_(0.0, std)
    return net


@pytest.mark.parametrize("texture", [0, 4], ids=["colour", "texture"])
@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (256, 256), (300, 200)])
def test_an_untrained_translator_returns_its_input(hw: tuple[int, int], texture: int) -> None:
    net = GuidedTranslator(low_size=32, ngf=8, n_blocks=2, texture=texture, texture_size=48).eval()
    x = torch.rand(2, 3, *hw) * 2 - 1
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    # exact: the zero change gives a = b = 0, so out = x + 0 * x + 0
    assert torch.equal(y, x)


def test_a_trained_translator_changes_the_image_and_stays_in_range() -> None:
    net = _trained_like()
    x = _photo(96, 128)
    with torch.no_grad():
        y = net(x)
    assert (y - x).abs().mean() > 0.01
    assert y.min() >= -1.0 and y.max() <= 1.0


def test_output_at_two_resolutions_agrees_after_resizing() -> None:
    """The same photo at 256 and 1024 px: the 1024 output, resized to 256 (antialiased), differs
    from the 256 output by < 1 % of the range (mean absolute difference), while the change
    itself is several times larger."""
    net = _trained_like(low_size=64, std=0.01)
    small, large = _photo(256, 256), _photo(1024, 1024)
    with torch.no_grad():
        y_small, y_large = net(small), net(large)
    down = F.interpolate(y_large, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    ref = F.interpolate(large, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    gap = ((down - ref) - (y_small - small)).abs().mean().item() / 2  # [0, 1] units, change vs change
    change = (y_small - small).abs().mean().item() / 2
    assert change > 0.02
    assert gap < 0.01
    assert gap < change / 5


def test_guided_filter_reproduces_a_locally_linear_target() -> None:
    torch.manual_seed(0)
    guide = torch.rand(1, 3, 40, 40)
    target = 0.5 * guide - 0.2  # linear in the guide everywhere: the filter must recover it
    a, b = guided_filter_coefficients(guide, target, radius=2, eps=1e-8)
    torch.testing.assert_close(a * guide + b, target, atol=1e-3, rtol=0)
    # the box filter is a mean over clipped windows: a constant stays constant up to the border
    torch.testing.assert_close(box_filter(torch.ones(1, 1, 5, 7), 2), torch.ones(1, 1, 5, 7))


def test_edges_of_the_full_resolution_input_survive() -> None:
    """A sharp vertical edge at full resolution stays sharp: the low-resolution coefficients are
    smooth, but the output is linear in the full-resolution input within each window."""
    net = _trained_like(low_size=32, std=0.01)
    x = torch.full((1, 3, 512, 512), -0.6)
    x[..., 257:] = 0.6  # an edge between columns 256 and 257
    with torch.no_grad():
        y = net(x)
    step = (y[..., 257] - y[..., 256]).abs().mean().item()
    neighbours = (y[..., 256] - y[..., 255]).abs().mean().item() + (
        y[..., 258] - y[..., 257]
    ).abs().mean().item()
    assert step > 0.5  # still an edge of most of its original height (1.2)
    assert neighbours < step / 10


def test_bad_settings_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        GuidedTranslator(low_size=30)
    with pytest.raises(ValueError, match="eps"):
        GuidedTranslator(eps=0)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        GuidedTranslator(low_size=16, ngf=4, n_blocks=1)(torch.rand(1, 1, 16, 16))


def test_the_texture_head_paints_what_a_colour_change_cannot() -> None:
    """Fit a photo with fine stripes (period 4 px) painted on it: the colour path and its 2x
    coarser detail residual cannot express them and stay at the untranslated error; the texture
    head, working at the photo's own size, learns them, dilated or plain."""
    x = _photo(48, 48)
    stripes = 0.3 * torch.sin(torch.arange(48) * torch.pi / 2).view(1, 1, 1, 48)
    target = (x + stripes).clamp(-1, 1)
    untranslated = (x - target).pow(2).mean().item()
    heads = {"none": {}, "dilated": {"texture": 8}, "plain": {"texture": 8, "texture_dilated": False}}
    errors = {}
    for name, head in heads.items():
        torch.manual_seed(0)
        net = GuidedTranslator(low_size=24, ngf=8, n_blocks=2, norm="none", detail=True, texture_size=48,
                               **head)  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(150):
            loss = (net(x) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        errors[name] = loss.item()
    assert errors["none"] > 0.9 * untranslated
    assert errors["dilated"] < 0.25 * untranslated and errors["plain"] < 0.25 * untranslated


@pytest.mark.parametrize(("dilated", "field"), [(True, 33), (False, 17)], ids=["dilated", "plain"])
def test_the_texture_heads_receptive_field(dilated: bool, field: int) -> None:
    """Stem, three blocks of two convs, output conv: with dilations 1, 2, 4 a pixel sees 33 px;
    with plain 3 x 3 convs 17 px, with no holes (every pixel of the field reaches the output)."""
    torch.manual_seed(0)
    head = TextureHead(4, n_blocks=3, dilated=dilated)
    for p in head.parameters():
        p.data.normal_(0.0, 0.3)
    image = torch.zeros(1, 3, 64, 64, requires_grad=True)
    head(image, torch.zeros(1, 3, 64, 64))[0, :, 32, 32].sum().backward()
    reach = image.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = reach.any(1).nonzero().flatten(), reach.any(0).nonzero().flatten()
    assert (rows.max() - rows.min() + 1).item() == (cols.max() - cols.min() + 1).item() == field
    if not dilated:
        assert reach[32 - 8 : 32 + 9, 32 - 8 : 32 + 9].all()


def test_reflect_padding_gives_no_position_signal_at_the_borders() -> None:
    """A translator with random weights everywhere, on an image of one colour: with reflection
    padding the change is the same at every pixel (nothing tells the network where the top edge
    is); with the downsampling convs zero padded, the border pixels change differently."""

    def spread(padding: str) -> float:
        torch.manual_seed(0)
        net = GuidedTranslator(low_size=32, ngf=8, n_blocks=2, norm="none", detail=True, padding=padding,
                               texture=4, texture_size=40).eval()  # fmt: skip
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.1)
            y = net(torch.full((1, 3, 60, 80), 0.2))
        return (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))).max().item()

    assert spread("reflect") < 1e-5
    assert spread("zeros") > 1e-2
    assert (
        "reflect padding" in GuidedTranslator(low_size=16, ngf=4, n_blocks=1, padding="reflect").architecture
    )


def test_texture_settings_are_checked_and_named_in_the_architecture() -> None:
    with pytest.raises(ValueError, match="texture"):
        GuidedTranslator(low_size=16, ngf=4, n_blocks=1, texture=-1)
    with pytest.raises(ValueError, match="texture"):
        GuidedTranslator(low_size=16, ngf=4, n_blocks=1, texture=4, texture_size=4)
    net = GuidedTranslator(low_size=16, ngf=4, n_blocks=1, texture=4, texture_size=96)
    assert "texture head 4 ch at 96 px" in net.architecture
    plain = GuidedTranslator(
        low_size=16, ngf=4, n_blocks=1, texture=4, texture_size=96, texture_dilated=False
    )
    assert "texture head 4 ch plain at 96 px" in plain.architecture
    assert "texture" not in GuidedTranslator(low_size=16, ngf=4, n_blocks=1).architecture


@pytest.mark.parametrize(
    "options", [{}, {"detail": True}, {"detail": True, "texture": 4, "texture_size": 48}],
    ids=["plain", "detail", "texture"],
)  # fmt: skip
def test_onnx_graph_matches_torch_at_several_sizes(tmp_path: Path, options: dict) -> None:
    """The whole graph, low-resolution copy and full-resolution step included, in onnxruntime:
    square, non-square and larger-than-traced sizes, and batch 2."""
    ort = pytest.importorskip("onnxruntime")
    from training.onnx_export import export_onnx
    from training.recipes import ExportSpec

    net = _trained_like(low_size=32, **options)
    spec = ExportSpec(task="translate", method="cyclegan", description="t", output_channels=3,
                      input_channels=3, input_range=(-1.0, 1.0), multiple_of=1, native_size=32)  # fmt: skip
    path = tmp_path / "g.onnx"
    export_onnx(net, spec, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 75, 130), (1, 3, 333, 250)]:
        x = _photo(*shape[2:]).expand(shape[0], -1, -1, -1).contiguous()
        (out,) = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = net(x).numpy()
        assert out.shape == shape
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_a_generator_without_normalisation_keeps_its_activations_alive() -> None:
    """norm="none" (no instance norm, so no droplet blobs): He init with scaled residual branches keeps
    the features at the input's scale; the N(0, 0.02) init that instance norm relies on would let them
    fade away layer by layer. The translator is still the identity before training."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128) * 2 - 1

    def pre_head_std(g) -> float:
        h = g.low(x)
        with torch.no_grad():
            for m in list(g.net.model)[:-2]:
                h = m(h)
        return float(h.std())

    plain = GuidedTranslator(norm="none")
    assert 0.3 < pre_head_std(plain) < 3.0
    with torch.no_grad():
        assert torch.equal(plain(x), x)
    from training.networks.common import init_weights

    faded = GuidedTranslator(norm="none")
    init_weights(faded.net)
    assert pre_head_std(faded) < 0.05


def test_bounded_slopes_never_invert_a_photos_contrast() -> None:
    photo = _photo(64, 64)
    inverting = -2.5 * photo  # a change that would turn the photo into its negative
    a_free, _ = guided_filter_coefficients(photo, inverting, 1, 1e-4)
    a_bound, b_bound = guided_filter_coefficients(photo, inverting, 1, 1e-4, max_slope=0.75)
    assert float(a_free.min()) < -2.0  # unbounded: gain 1 + a < 0, the contrast inverts
    assert float(a_bound.min()) > -0.75 and float(a_bound.max()) < 0.75
    # the bounded fit still reproduces the change's local means (b is refitted to them)
    fitted = box_filter(a_bound * photo + b_bound, 1)
    assert torch.allclose(fitted.mean(), box_filter(inverting, 1).mean(), atol=0.05)
    # through a translator: every channel's gain stays positive, so bright stays brighter than dark
    net = _trained_like(std=2.0, max_slope=0.75)
    with torch.no_grad():
        _, a, _ = net.coefficients(net.low(photo))
        assert float((1 + a).min()) > 0.0
        _, a_free, _ = _trained_like(std=2.0).coefficients(net.low(photo))
        assert float((1 + a_free).min()) < 0.0  # the same weights, unbounded, invert somewhere
    assert "slope <= 0.75" in net.architecture
    with pytest.raises(ValueError, match="max_slope"):
        GuidedTranslator(max_slope=-1.0)
