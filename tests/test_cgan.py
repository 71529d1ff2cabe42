"""Class-conditional GAN: networks, labelled data loaders and split, and the recipe on the shared loop."""

from __future__ import annotations

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import labelled
from training.networks.conditional import (
    ConditionalGenerator,
    MinibatchStdDev,
    ProjectionDiscriminator,
    check_labels,
)

QUICKDRAW = Path(__file__).parent / "fixtures" / "quickdraw"


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3)])
def test_generator_and_discriminator_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    g = ConditionalGenerator(5, latent_dim=16, out_ch=channels, output_size=size, ngf=8, embed_dim=8)
    d = ProjectionDiscriminator(5, in_ch=channels, ndf=8, minibatch_std=True)
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 4, 2])
    x = g(z, y)
    assert x.shape == (4, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x, y).shape == (4,)


def test_labels_out_of_range_raise_a_clear_error() -> None:
    g = ConditionalGenerator(3, latent_dim=8, ngf=8, embed_dim=4).eval()
    d = ProjectionDiscriminator(3, ndf=8)
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"out of range.*3 classes, use 0\.\.2"):
        g(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        g(z, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="out of range"):
        d(torch.zeros(2, 1, 28, 28), torch.tensor([5, 0]))
    with pytest.raises(TypeError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="z must be N x 8"):
        g(torch.randn(2, 9), torch.tensor([0, 1]))


def test_same_seed_same_samples_and_independent_of_the_batch() -> None:
    def make() -> ConditionalGenerator:
        torch.manual_seed(123)
        return ConditionalGenerator(3, latent_dim=16, ngf=8, embed_dim=8).eval()

    g1, g2 = make(), make()
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        a, b = g1(z, y), g2(z, y)
        alone = g1(z[4:5], y[4:5])
        other_label = g1(z[4:5], torch.tensor([2]))
    assert torch.equal(a, b)
    assert torch.allclose(a[4:5], alone, atol=1e-6)  # eval-mode BN: a sample depends on itself only
    assert not torch.allclose(alone, other_label)  # and the label matters


def test_minibatch_std_adds_one_channel_that_sees_diversity() -> None:
    same = torch.ones(4, 3, 5, 5)
    varied = torch.randn(4, 3, 5, 5)
    assert MinibatchStdDev()(same).shape == (4, 4, 5, 5)
    assert float(MinibatchStdDev()(same)[:, -1].max()) < 1e-3
    assert float(MinibatchStdDev()(varied)[:, -1].min()) > 0.1


def test_generator_exports_to_onnx_with_the_sample_contract(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    g = ConditionalGenerator(3, latent_dim=16, ngf=8, embed_dim=8).eval()
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    path = tmp_path / "g.onnx"
    torch.onnx.export(
        g, (z, y), str(path), input_names=["z", "label"], output_names=["output"],
        dynamic_axes={"z": {0: "N"}, "label": {0: "N"}, "output": {0: "N"}}, dynamo=False, opset_version=17,
    )  # fmt: skip
    sess = ort.InferenceSession(str(path))
    z5, y5 = torch.randn(5, 16), torch.tensor([0, 1, 2, 1, 0])
    (out,) = sess.run(None, {"z": z5.numpy(), "label": y5.numpy()})
    assert out.shape == (5, 1, 28, 28)
    with torch.no_grad():
        assert np.allclose(out, g(z5, y5).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def test_quickdraw_folder_loads_with_labels_from_file_names() -> None:
    data = labelled.load_labelled(QUICKDRAW)
    assert data.classes == ["apple", "cat", "fish"]
    assert data.images.shape == (120, 1, 28, 28) and data.images.dtype == np.uint8
    cat_rows = np.load(QUICKDRAW / "cat.npy").reshape(-1, 28, 28)
    assert np.array_equal(data.images[data.labels == 1][:, 0], cat_rows)


def test_quickdraw_rows_may_be_flat_and_bad_files_are_named(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 256, (5, 784), dtype=np.uint8)  # N x 784, no middle axis
    np.save(tmp_path / "zebra.npy", rows)
    np.save(tmp_path / "ant.npy", rows[:2])
    data = labelled.load_labelled(tmp_path)
    assert data.classes == ["ant", "zebra"] and data.counts() == {"ant": 2, "zebra": 5}
    assert np.array_equal(data.images[data.labels == 1].reshape(5, 784), rows)
    np.save(tmp_path / "bad.npy", np.zeros((3, 100), np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npy.*784"):
        labelled.load_labelled(tmp_path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files_load_with_their_labels(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.uint8)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    data = labelled.load_labelled(tmp_path)
    assert data.format == "idx" and data.classes == [str(i) for i in range(10)]
    assert np.array_equal(data.labels, labels) and np.array_equal(data.images[:, 0], images)
    # with the official test pair, the test split is that pair
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:3])
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels[:3])
    test = labelled.load_split(tmp_path, "test")
    assert np.array_equal(test.labels, labels[:3])
    assert len(labelled.load_split(tmp_path, "train")) == 10


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 4)
    with pytest.raises(ValueError, match="truncated"):
        labelled.read_idx(path)


def test_image_folder_loads_rgb_classes(tmp_path: Path) -> None:
    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), rgb).save(tmp_path / name / f"{i}.png")
    data = labelled.load_labelled(tmp_path, image_size=32)
    assert data.format == "imagefolder" and data.classes == ["blue", "red"]
    assert data.images.shape == (6, 3, 32, 32)
    red = data.images[data.labels == 1]
    assert (red[:, 0] == 255).all() and (red[:, 2] == 0).all()


def test_split_is_deterministic_disjoint_and_per_class() -> None:
    labels = np.array([0] * 20 + [1] * 10 + [2] * 3)
    train, test = labelled.split_indices(labels, 0.1)
    train2, test2 = labelled.split_indices(labels, 0.1)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert list(test) == [18, 19, 29, 32]  # the last 10 % of each class (at least one)
    # on the fixture: the test split is the last 4 rows of each file
    test_data = labelled.load_split(QUICKDRAW, "test")
    fish = np.load(QUICKDRAW / "fish.npy").reshape(-1, 28, 28)
    assert np.array_equal(test_data.images[test_data.labels == 2][:, 0], fish[-4:])


def test_class_selection_renumbers_labels() -> None:
    data = labelled.load_split(QUICKDRAW, "train", classes=["fish", "apple"])
    assert data.classes == ["fish", "apple"] and set(data.labels.tolist()) == {0, 1}
    fish = np.load(QUICKDRAW / "fish.npy").reshape(-1, 28, 28)
    assert np.array_equal(data.images[data.labels == 0][:, 0], fish[:36])
    with pytest.raises(ValueError, match="not in the data"):
        labelled.load_split(QUICKDRAW, "train", classes=["dog"])


def test_28px_data_is_padded_to_32_with_background() -> None:
    images = np.full((1, 1, 28, 28), 255, np.uint8)
    x = labelled.to_model_range(images, 32)
    assert x.shape == (1, 1, 32, 32)
    assert float(x[0, 0, 0, 0]) == -1.0 and float(x[0, 0, 16, 16]) == 1.0


# ------------------------------------------------------------------------------------------------
# the recipe
# ------------------------------------------------------------------------------------------------
def _tiny_config(out: Path, **kw):
    from training.recipes.cgan import Config, resolve_data_fields

    cfg = Config(
        data=str(QUICKDRAW), out=str(out), steps=4, batch_size=6, latent_dim=16, ngf=8, ndf=8,
        embed_dim=8, precision="fp32", device="cpu", log_every=2, sample_every=2, ckpt_every=100,
        num_workers=0, ema_decay=0.9, **kw,
    )  # fmt: skip
    return resolve_data_fields(cfg)


def _load(path: Path) -> dict:
    return torch.load(path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def test_recipe_trains_resumes_exactly_and_logs_samples(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.loop import train
    from training.recipes import cgan, load_run

    cfg = _tiny_config(tmp_path / "straight", minibatch_std=True)
    assert cfg.classes == ("apple", "cat", "fish") and cfg.channels == 1
    assert train("cgan", cfg, cgan.CGANRecipe) == 0
    half = replace(cfg, out=str(tmp_path / "resumed"))
    train("cgan", half, cgan.CGANRecipe, stop_at=2)  # a session that ends half-way
    assert train("cgan", replace(half, resume=True), cgan.CGANRecipe) == 0

    a, b = _load(tmp_path / "straight"), _load(tmp_path / "resumed")
    assert a["step"] == b["step"] == 4
    for group in ("nets", "ema"):
        for net, state in a[group].items():
            for key, value in state.items():
                assert torch.equal(value, b[group][net][key]), f"{group}.{net}.{key} differs after resume"

    # sample grid: one row per class (3 rows of 28 px + 2 px padding)
    grid = Image.open(tmp_path / "straight" / "samples" / "step_0000004.png")
    assert grid.size[1] == 3 * (28 + 2) + 2
    acc = EventAccumulator(str(tmp_path / "straight" / "tb"))
    acc.Reload()
    assert "samples" in acc.Tags()["images"]
    assert any(t.endswith("G_loss") for t in acc.Tags()["scalars"])
    assert any(t.endswith("D_loss") for t in acc.Tags()["scalars"])

    # the checkpoint rebuilds the exported generator, with the class names
    run = load_run(tmp_path / "straight")
    assert run.used_ema and run.config.classes == ("apple", "cat", "fish")
    out = run.nets["G"](torch.randn(2, 16), torch.tensor([0, 2]))
    assert out.shape == (2, 1, 28, 28)
    spec = cgan.export_specs(run.config)["G"]
    assert (spec.task, spec.classes, spec.latent_dim, spec.output_size) == (
        "sample",
        ["apple", "cat", "fish"],
        16,
        28,
    )
    assert spec.output_range == (-1.0, 1.0) and spec.dataset["split_sizes"] == {"train": 108, "test": 12}


@pytest.mark.parametrize("loss", ["vanilla", "wgan-gp"])
def test_other_losses_and_label_smoothing_take_steps(tmp_path: Path, loss: str) -> None:
    from training.loop import Runtime
    from training.recipes import cgan

    cfg = _tiny_config(tmp_path, gan_loss=loss, real_label=0.9 if loss == "vanilla" else 1.0)
    recipe = cgan.CGANRecipe(cfg, Runtime.create("cpu", "fp32"))
    before = [p.detach().clone() for p in recipe.G.parameters()]
    metrics = recipe.train_step(next(recipe.batches(0)), 0)
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(p0, p) for p0, p in zip(before, recipe.G.parameters(), strict=True))


def test_resume_refuses_a_different_class_list(tmp_path: Path) -> None:
    from training.loop import train
    from training.recipes import cgan

    cfg = _tiny_config(tmp_path, classes=("apple", "cat"))
    assert train("cgan", replace(cfg, steps=1), cgan.CGANRecipe) == 0
    with pytest.raises(ValueError, match="classes"):
        train("cgan", replace(cfg, classes=("apple", "fish"), resume=True), cgan.CGANRecipe)


@pytest.mark.parametrize("recipe", ["cgan", "classifier", "srgan"])
def test_cli_help(recipe: str, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", recipe, "--help"])
    assert exc.value.code == 0
    assert "--data" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# DiffAugment and the EMA generator's batch-norm statistics
# ------------------------------------------------------------------------------------------------
def test_diffaug_ops_keep_shape_pass_gradients_and_move_content() -> None:
    from training.diffaug import cutout, diff_augment, parse_policy, translate

    torch.manual_seed(0)
    x = torch.rand(16, 1, 32, 32, requires_grad=True)
    y = diff_augment(x, parse_policy("translation,cutout,brightness"))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable: G learns through it

    ramp = torch.arange(32.0).expand(32, 32)[None, None].repeat(64, 1, 1, 1)
    shifted = translate(ramp, fill=-1.0)
    assert (shifted == -1).any() and not torch.equal(shifted, ramp)  # some images moved, border filled
    # a shifted row is still a contiguous run of the ramp: every step is +1 except at the border
    row = shifted[:, 0, 16]
    steps = row[:, 1:] - row[:, :-1]
    assert ((steps == 1) | (row[:, 1:] == -1) | (row[:, :-1] == -1)).all()
    holes = cutout(torch.zeros(64, 1, 32, 32), fill=-1.0)
    frac = (holes == -1).float().mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac <= 0.25 + 1e-6).all()  # a square of at most half the side

    with pytest.raises(ValueError, match="rotate"):
        parse_policy("translation,rotate")
    assert parse_policy("") == ()


def test_bad_diffaug_policy_or_mode_seeking_weight_is_a_config_error() -> None:
    from training.config import ConfigError
    from training.recipes import cgan

    with pytest.raises(ConfigError, match="blur"):
        cgan.Config(diffaug="blur")
    with pytest.raises(ConfigError, match="mode-seeking"):
        cgan.Config(mode_seeking=-1.0)


def test_mode_seeking_term_rewards_samples_that_change_with_z(tmp_path: Path) -> None:
    from training.loop import Runtime
    from training.recipes import cgan

    torch.manual_seed(0)
    cfg = _tiny_config(tmp_path, mode_seeking=1.0)
    recipe = cgan.CGANRecipe(cfg, Runtime.create("cpu", "fp32"))
    metrics = recipe.train_step(next(recipe.batches(0)), 0)
    assert float(metrics["G_diversity"]) > 0
    # the term's gradient pushes G's two images apart: one step on it alone raises the ratio
    z = torch.randn(32, cfg.latent_dim)
    label = torch.randint(0, len(cfg.classes), (16,))
    opt = torch.optim.SGD(recipe.G.parameters(), lr=0.05)

    def ratio() -> torch.Tensor:
        out = recipe.G(z, torch.cat([label, label]))
        return (out[:16] - out[16:]).abs().mean() / (z[:16] - z[16:]).abs().mean()

    before = float(ratio())
    opt.zero_grad()
    (1.0 / (ratio() + 1e-5)).backward()
    opt.step()
    assert float(ratio()) > before


def test_recalibrated_batch_norm_matches_the_weights_it_runs_with() -> None:
    from training.loop import EMA, recalibrate_batch_norm

    torch.manual_seed(0)
    g = ConditionalGenerator(3, latent_dim=16, ngf=8)
    ema = EMA(g, 0.5)
    with torch.no_grad():  # the live net moves on: its BN statistics no longer fit the EMA weights
        for p in g.parameters():
            p.mul_(3.0).add_(0.5)
        g.train()
        for _ in range(20):
            g(torch.randn(64, 16), torch.randint(0, 3, (64,)))
    ema.update(g)
    z, y = torch.randn(256, 16), torch.randint(0, 3, (256,))

    def gap(net: torch.nn.Module) -> float:  # eval output vs the same batch with its own statistics
        with torch.no_grad():
            out_eval = net.eval()(z, y)
            out_train = net.train()(z, y)
        net.eval()
        return float((out_eval - out_train).abs().mean())

    before = gap(ema.module)
    batches = [(torch.randn(128, 16), torch.randint(0, 3, (128,))) for _ in range(8)]
    assert recalibrate_batch_norm(ema.module, batches) == 3
    after = gap(ema.module)
    assert after < 0.25 * before, (before, after)
    assert not ema.module.training  # mode restored
    assert all(m.momentum == 0.1 for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert recalibrate_batch_norm(torch.nn.Conv2d(1, 1, 1), iter(())) == 0
