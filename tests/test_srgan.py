"""GAN super-resolution: networks, HR->LR pairs made in code, and both phases on the shared loop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import quality
from training.data.sr import SRPatches, random_dihedral
from training.networks.sr import CompactSRNet, SRDiscriminator

SR_FIXTURES = Path(__file__).parent / "fixtures" / "sr"


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(("h", "w"), [(7, 13), (1, 1), (16, 9)])
def test_output_is_exactly_scale_times_the_input(scale: int, h: int, w: int) -> None:
    net = CompactSRNet(scale, num_feat=8, num_conv=2)
    assert net(torch.rand(2, 3, h, w)).shape == (2, 3, h * scale, w * scale)


def test_eval_output_is_clamped_to_the_card_range_but_training_is_not() -> None:
    net = CompactSRNet(4, num_feat=8, num_conv=1)
    x = torch.full((1, 3, 5, 5), 1.0)
    with torch.no_grad():
        net.body[-2].bias.fill_(0.5)  # push the residual above 1
        assert float(net.train()(x).max()) > 1.0
        assert float(net.eval()(x).max()) == 1.0


def test_untrained_generator_starts_near_nearest_upsampling() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 6, 6)
    y = CompactSRNet(4, num_feat=8, num_conv=2).eval()(x)
    nearest = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    assert torch.allclose(y, nearest, atol=0.05)


def test_generator_exports_to_onnx_with_dynamic_height_and_width(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    net = CompactSRNet(4, num_feat=8, num_conv=2).eval()
    path = tmp_path / "sr.onnx"
    torch.onnx.export(
        net, (torch.rand(1, 3, 16, 16),), str(path), input_names=["image"], output_names=["output"],
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H4", 3: "W4"}},
        dynamo=False, opset_version=17,
    )  # fmt: skip
    x = torch.rand(2, 3, 11, 7)
    (out,) = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    assert out.shape == (2, 3, 44, 28)
    with torch.no_grad():
        assert np.allclose(out, net(x).numpy(), atol=1e-5)


def test_discriminator_gives_a_logit_map_and_features() -> None:
    d = SRDiscriminator(ndf=8)
    logits, feats = d(torch.rand(2, 3, 64, 48), return_features=True)
    assert logits.shape == (2, 1, 4, 3) and len(feats) == 5
    assert torch.equal(d(torch.rand(1, 3, 32, 32)).new_tensor(0), torch.tensor(0.0))  # plain call works


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def test_pairs_are_hr_crops_with_lr_made_by_the_protocol_downscale() -> None:
    ds = SRPatches(SR_FIXTURES, scale=4, lr_patch=12)
    assert len(ds) == 5
    lr, hr = ds.load_item(0, seed=42)
    assert lr.shape == (3, 12, 12) and hr.shape == (3, 48, 48)
    assert float(lr.min()) >= 0.0 and float(hr.max()) <= 1.0
    hr_u8 = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = quality.bicubic_downscale(hr_u8, 4)
    assert np.array_equal((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    # the same seed gives the same pair, another seed another crop
    lr2, hr2 = ds.load_item(0, seed=42)
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(hr, ds.load_item(0, seed=43)[1])


def test_small_images_are_padded_to_the_patch(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "tiny.png")
    lr, hr = SRPatches(tmp_path, scale=2, lr_patch=16).load_item(0, 0)
    assert hr.shape == (3, 32, 32) and lr.shape == (3, 16, 16)


def test_realworld_degradation_changes_lr_only_and_is_seeded() -> None:
    clean = SRPatches(SR_FIXTURES, scale=4, lr_patch=16)
    real = SRPatches(SR_FIXTURES, scale=4, lr_patch=16, realworld=True, degradation_strength=2.0)
    changed = 0
    for seed in range(6):
        lr_c, hr_c = clean.load_item(1, seed)
        lr_r, hr_r = real.load_item(1, seed)
        assert torch.equal(hr_c, hr_r)  # the target stays clean
        assert torch.equal(lr_r, real.load_item(1, seed)[0])  # reproducible
        changed += not torch.equal(lr_c, lr_r)
    assert changed >= 3


def test_dihedral_augmentation_covers_all_eight_transforms() -> None:
    img = np.arange(12).reshape(3, 4)[..., None]
    rng = np.random.default_rng(0)
    seen = {random_dihedral(img, rng).tobytes() + bytes(random_dihedral(img, rng).shape) for _ in range(200)}
    assert len(seen) >= 8


# ------------------------------------------------------------------------------------------------
# the recipe
# ------------------------------------------------------------------------------------------------
def _config(out: Path, **kw):
    from training.recipes.srgan import Config

    base = dict(
        data=str(SR_FIXTURES), out=str(out), steps=2, batch_size=2, lr_patch=8, num_feat=8, num_conv=2,
        ndf=8, precision="fp32", device="cpu", num_workers=0, log_every=1, sample_every=2,
        ckpt_every=100, ema_decay=0.9,
    )  # fmt: skip
    base.update(kw)
    return Config(**base)


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def _assert_same_weights(a: dict, b: dict) -> None:
    for group in ("nets", "ema"):
        assert a[group].keys() == b[group].keys()
        for net, state in a[group].items():
            for key, value in state.items():
                assert torch.equal(value, b[group][net][key]), f"{group}.{net}.{key} differs"


@pytest.fixture(scope="module")
def psnr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step ``--phase psnr`` run validated on two small held-out images: (run folder, val folder)."""
    from training.loop import train
    from training.recipes import srgan

    root = tmp_path_factory.mktemp("srgan")
    val = root / "val"
    val.mkdir()
    for name in ("t10.png", "t12.png"):
        (val / name).write_bytes((SR_FIXTURES / name).read_bytes())
    run = root / "sr_psnr"
    assert train("srgan", _config(run, val_data=str(val)), srgan.SRGANRecipe) == 0
    return run, val


def test_psnr_phase_logs_validation_and_sample_grid(psnr_run: tuple[Path, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.recipes import load_run, srgan

    run, val = psnr_run
    assert set(_ckpt(run)["nets"]) == {"G"}  # no discriminator in the psnr phase
    # sample grid: one row per --val-data preview image (2), columns LR | bicubic | SR | HR of 32 px
    assert Image.open(run / "samples" / "step_0000002.png").size == (4 * (32 + 2) + 2, 2 * (32 + 2) + 2)

    # validation: model and bicubic baseline through the same protocol, in TensorBoard
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert "samples" in acc.Tags()["images"]
    assert {"val/psnr_y", "val/ssim_y", "val/psnr_y_bicubic"} <= set(acc.Tags()["scalars"])
    bicubic = quality.evaluate_upscaler(quality.bicubic_upscaler(4), val, 4).mean["psnr_y"]
    assert acc.Scalars("val/psnr_y_bicubic")[-1].value == pytest.approx(bicubic, abs=1e-4)
    model = quality.evaluate_upscaler(quality.torch_upscaler(load_run(run).nets["G"]), val, 4)
    assert acc.Scalars("val/psnr_y")[-1].value == pytest.approx(model.mean["psnr_y"], abs=1e-4)

    spec = srgan.export_specs(load_run(run).config)["G"]
    assert (spec.task, spec.scale, spec.multiple_of, spec.native_size) == ("upscale", 4, 1, 8)
    assert spec.input_range == spec.output_range == (0.0, 1.0) and spec.input_channels == 3
    assert spec.dataset["split_sizes"] == {"train": 5, "val": 2}


def test_gan_phase_starts_from_the_psnr_run_and_resumes_exactly(
    psnr_run: tuple[Path, Path], tmp_path: Path
) -> None:
    from training.loop import Runtime, train
    from training.recipes import srgan

    run, _ = psnr_run
    gan_cfg = _config(tmp_path / "straight", phase="gan", init=str(run), fm_weight=1.0, realworld=True)
    # the gan phase starts from the psnr run's (EMA) generator
    recipe = srgan.SRGANRecipe(replace(gan_cfg, out=str(tmp_path / "fresh")), Runtime.create("cpu", "fp32"))
    for key, value in recipe.G.state_dict().items():
        assert torch.equal(value, _ckpt(run)["ema"]["G"][key])

    # N steps straight == N/2 + --resume
    train("srgan", gan_cfg, srgan.SRGANRecipe)
    half = replace(gan_cfg, out=str(tmp_path / "resumed"))
    train("srgan", half, srgan.SRGANRecipe, stop_at=1)
    train("srgan", replace(half, resume=True), srgan.SRGANRecipe)
    a, b = _ckpt(tmp_path / "straight"), _ckpt(tmp_path / "resumed")
    assert a["step"] == b["step"] == 2 and set(a["nets"]) == {"G", "D"}
    _assert_same_weights(a, b)
    # preview rows come from --data here (4 images)
    grid = Image.open(tmp_path / "straight" / "samples" / "step_0000002.png")
    assert grid.size == (4 * (32 + 2) + 2, 4 * (32 + 2) + 2)


def test_init_from_a_different_architecture_says_what_to_pass(tmp_path: Path) -> None:
    from training.config import ConfigError
    from training.loop import train
    from training.recipes import srgan

    train("srgan", _config(tmp_path / "p", steps=1, sample_every=0), srgan.SRGANRecipe)
    bad = _config(tmp_path / "g", phase="gan", init=str(tmp_path / "p"), num_feat=16)
    with pytest.raises(ConfigError, match="--num-feat 8"):
        train("srgan", bad, srgan.SRGANRecipe)


def test_cli_reports_a_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    code = main(["train", "srgan", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "folder not found" in capsys.readouterr().err
