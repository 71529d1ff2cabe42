"""pix2pix recipe on real facades pairs at 32 px: a step, overfitting two pairs, the CLI, the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.cli import main
from training.config import ConfigError
from training.loop import Runtime
from training.losses import l1_loss
from training.recipes import load_run
from training.recipes.pix2pix import Config, Pix2Pix, build_inference_nets, export_specs, unet_depth


def tiny(fixtures_dir: Path, **kw) -> Config:
    base = dict(
        data=str(fixtures_dir / "facades"), crop_size=32, ngf=8, ndf=8, n_layers_d=2, direction="BtoA"
    )
    base.update(steps=4, device="cpu", precision="fp32", num_workers=0, sample_every=0)
    base.update(kw)
    return Config(**base)


def test_one_step(fixtures_dir: Path, small_torch) -> None:
    torch.manual_seed(0)
    recipe = Pix2Pix(tiny(fixtures_dir), Runtime.create("cpu", "fp32"))
    batch = next(recipe.batches(0))
    before = [p.detach().clone() for p in recipe.nets["G"].parameters()]
    metrics = recipe.train_step(batch, 0)
    assert set(metrics) == {"G_gan", "G_L1", "D"} and all(torch.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, recipe.nets["G"].parameters(), strict=True))
    assert all(p.requires_grad for p in recipe.nets["D"].parameters())  # re-enabled after the G step
    # the sample grid's rows are input, output, target, as the generator computes them
    g = recipe.nets["G"].eval()  # no dropout: the output is deterministic
    grid = recipe.sample_images({"G": g}, 1)
    a, b = recipe.held_out.images()
    with torch.no_grad():
        out = g(a)
    assert out.min() >= -1.0 and out.max() <= 1.0  # the generator's own range (tanh), unclamped
    assert (out - a).abs().mean() > 1e-2 and (out - b).abs().mean() > 1e-2  # neither input nor target
    assert grid.shape == (3, 3 * 34 + 2, len(a) * 34 + 2)
    torch.testing.assert_close(_tile(grid, 0, 0), (a[0] + 1) / 2)
    torch.testing.assert_close(_tile(grid, 1, 0), (out[0] + 1) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(_tile(grid, 2, 0), (b[0] + 1) / 2)


def _tile(grid: torch.Tensor, row: int, col: int, size: int = 32, pad: int = 2) -> torch.Tensor:
    """The image at (row, col) of a torchvision grid of size x size images."""
    y, x = pad + row * (size + pad), pad + col * (size + pad)
    return grid[:, y : y + size, x : x + size]


def test_overfits_two_pairs(fixtures_dir: Path, tmp_path: Path, small_torch) -> None:
    root = tmp_path / "two"
    (root / "train").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg"):
        (root / "train" / name).write_bytes((fixtures_dir / "facades" / "train" / name).read_bytes())
    cfg = tiny(
        fixtures_dir, data=str(root), load_size=32, flip=False, ngf=16, batch_size=2, lr_g=1e-3, steps=10**6
    )
    torch.manual_seed(0)
    recipe = Pix2Pix(cfg, Runtime.create("cpu", "fp32"))
    stream = recipe.batches(0)
    fixed = next(recipe.batches(0))

    def l1_now() -> float:
        recipe.nets["G"].eval()
        with torch.no_grad():
            value = l1_loss(recipe.nets["G"](fixed["A"]), fixed["B"]).item()
        recipe.nets["G"].train()
        return value

    start = l1_now()
    for step in range(120):
        recipe.train_step(next(stream), step)
    assert l1_now() < 0.5 * start


def test_cli_help_and_a_three_step_run(fixtures_dir: Path, tmp_path: Path, capsys, small_torch) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "pix2pix", "--help"])
    assert e.value.code == 0
    assert "--direction" in capsys.readouterr().out
    out = tmp_path / "run"
    args = ["--data", str(fixtures_dir / "facades"), "--direction", "BtoA", "--size", "32", "--ngf", "8"]
    args += ["--ndf", "8", "--steps", "3", "--num-workers", "0", "--out", str(out), "--ema-decay", "0.9"]
    assert main(["train", "pix2pix", *args]) == 0
    run = load_run(out)
    assert run.recipe == "pix2pix" and run.step == 3 and run.used_ema and set(run.nets) == {"G"}
    assert run.config.direction == "BtoA" and unet_depth(run.config) == 5
    with torch.no_grad():
        assert run.nets["G"](torch.zeros(1, 3, 64, 32)).shape == (1, 3, 64, 32)
    assert main(["train", "pix2pix", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_defaults_are_the_papers_reference_settings() -> None:
    """`transfigure train pix2pix` without options is the reference pix2pix (Isola et al., 2017,
    section 3.3 and appendix 6: the non-saturating GAN loss, lambda_L1 100, Adam 2e-4 / beta1 0.5,
    batch 1, 256 crops, the U-Net-256 with 8 downsamplings)."""
    cfg = Config()
    assert (cfg.gan_loss, cfg.lambda_l1, cfg.lr_g, cfg.beta1, cfg.crop_size, cfg.batch_size) == (
        "vanilla", 100.0, 2e-4, 0.5, 256, 1,
    )  # fmt: skip
    assert unet_depth(cfg) == 8 and build_inference_nets(cfg)["G"].multiple_of == 256


def test_contract_and_config_errors(fixtures_dir: Path) -> None:
    spec = export_specs(tiny(fixtures_dir))["G"]
    assert (spec.task, spec.method, spec.multiple_of, spec.native_size) == ("translate", "pix2pix", 32, 32)
    assert spec.dataset["split_sizes"] == {"train": 3, "test": 2}
    with pytest.raises(ConfigError, match="multiple of 32"):
        Config(crop_size=48, num_downs=5)
    with pytest.raises(ConfigError, match="direction"):
        Config(direction="sideways")
