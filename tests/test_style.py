"""The style-based conditional generator: shapes, truncation, style mixing, ONNX parity, and the
`cgan --generator style` recipe through training, evaluation with truncation, export and the zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import STYLE_INPUTS, ModelCard
from training.networks.style import STYLE_LAYERS, StyleGenerator
from training.onnx_export import check_parity, example_inputs, export_onnx, ort_feed, ort_session
from training.recipes import ExportSpec

QUICKDRAW = Path(__file__).parent / "fixtures" / "quickdraw"
LATENT = 16


def _generator(seed: int = 0, **kw) -> StyleGenerator:
    torch.manual_seed(seed)
    return StyleGenerator(3, latent_dim=LATENT, ngf=8, embed_dim=8, w_dim=16, mapping_layers=2, **kw)


def _trained_w_avg(g: StyleGenerator) -> StyleGenerator:
    """``g`` in eval mode with its per-class average of w computed (as the recipe does)."""
    g.recompute_w_avg(256, seed=1)
    return g.eval()


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3)])
def test_shapes_layers_and_range(size: int, channels: int) -> None:
    g = _generator(out_ch=channels, output_size=size)
    z, y = torch.randn(4, LATENT), torch.tensor([0, 1, 2, 0])
    x = g(z, y)
    assert x.shape == (4, channels, size, size) and x.min() >= -1 and x.max() <= 1
    assert g.num_layers == STYLE_LAYERS
    assert g.styles(z, y).shape == (4, STYLE_LAYERS, 16)
    with pytest.raises(ValueError, match=f"z must be N x {LATENT}"):
        g(torch.randn(2, LATENT + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        g.eval()(z[:1], torch.tensor([3]))


def test_eval_samples_depend_only_on_their_own_inputs() -> None:
    g = _trained_w_avg(_generator())
    z, y = torch.randn(5, LATENT), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        batch, alone = g(z, y), g(z[3:4], y[3:4])
        again = g(z, y)
        other_class = g(z[3:4], torch.tensor([2]))
    assert torch.equal(batch, again)  # eval-mode noise is fixed: same inputs, same image
    assert torch.allclose(batch[3:4], alone, atol=1e-5)
    assert not torch.allclose(alone, other_class, atol=1e-3)


def test_truncation_zero_is_the_class_average_image_for_every_z() -> None:
    g = _trained_w_avg(_generator())
    z = torch.randn(6, LATENT)
    for c in range(3):
        y = torch.full((6,), c)
        with torch.no_grad():
            x = g(z, y, psi=torch.zeros(6))
            average = g.synthesis(g.w_avg[y][:, None, :].expand(-1, STYLE_LAYERS, -1))
        assert torch.allclose(x, x[:1].expand_as(x), atol=1e-6)  # any z -> one image
        assert torch.allclose(x, average, atol=1e-6)  # ... the one of the class's average w
    with torch.no_grad():
        per_class = g(z[:3], torch.tensor([0, 1, 2]), psi=torch.zeros(3))
        plain, one = g(z, y), g(z, y, psi=torch.ones(6))
    assert not torch.allclose(per_class[0], per_class[1], atol=1e-3)  # each class has its own average
    assert torch.allclose(plain, one, atol=1e-6)  # psi 1: no truncation


def test_truncation_shrinks_the_spread_of_w_towards_the_class_average() -> None:
    g = _trained_w_avg(_generator())
    z, y = torch.randn(64, LATENT), torch.ones(64, dtype=torch.long)
    spread = []
    for psi in (1.0, 0.5, 0.1):
        with torch.no_grad():
            w = g.styles(z, y, psi=torch.full((64,), psi))[:, 0]
        spread.append(float((w - g.w_avg[1]).norm(dim=1).mean()))
    assert spread[0] > spread[1] > spread[2] > 0
    assert spread[1] == pytest.approx(0.5 * spread[0], rel=1e-4)


def test_mixing_at_the_last_layer_is_no_mixing_and_at_zero_is_the_second_latent() -> None:
    g = _trained_w_avg(_generator())
    z, z2, y = torch.randn(4, LATENT), torch.randn(4, LATENT), torch.tensor([0, 1, 2, 0])
    layers = torch.full((4,), STYLE_LAYERS)
    with torch.no_grad():
        plain, second = g(z, y), g(z2, y)
        none = g(z, y, z2=z2, mix_layer=layers)
        all_second = g(z, y, z2=z2, mix_layer=torch.zeros(4, dtype=torch.long))
        blended = g(z, y, z2=z2, mix_layer=layers, blend=torch.ones(4))
        mixed = g(z, y, z2=z2, mix_layer=torch.full((4,), 2))
        ws = g.styles(z, y, z2=z2, mix_layer=torch.full((4,), 2))
    assert torch.allclose(none, plain, atol=1e-6)
    assert torch.allclose(all_second, second, atol=1e-6)
    assert torch.allclose(blended, second, atol=1e-5)  # blend 1: all the way to z2
    assert not torch.allclose(mixed, plain, atol=1e-3) and not torch.allclose(mixed, second, atol=1e-3)
    with torch.no_grad():
        w1, w2 = g.styles(z, y)[:, 0], g.styles(z2, y)[:, 0]
    assert torch.allclose(ws[:, :2], w1[:, None].expand(-1, 2, -1)) and torch.allclose(
        ws[:, 2:], w2[:, None].expand(-1, STYLE_LAYERS - 2, -1)
    )


def test_training_tracks_the_class_average_of_w() -> None:
    g = _generator(w_avg_beta=0.0).train()  # beta 0: the average of the last batch, per class
    z, y = torch.randn(6, LATENT), torch.tensor([0, 0, 2, 2, 2, 0])
    g(z, y)
    with torch.no_grad():
        w = g.mapping(z, y)
    assert torch.allclose(g.w_avg[0], w[y == 0].mean(0), atol=1e-5)
    assert torch.allclose(g.w_avg[2], w[y == 2].mean(0), atol=1e-5)
    assert torch.equal(g.w_avg[1], torch.zeros(16))  # a class absent from the batch keeps its average


def _spec() -> ExportSpec:
    return ExportSpec(
        task="sample", method="cgan", description="style", output_channels=1, classes=["a", "b", "c"],
        latent_dim=LATENT, output_size=28, style_layers=STYLE_LAYERS,
    )  # fmt: skip


def test_onnx_export_matches_torch_with_every_control(tmp_path: Path) -> None:
    g = _trained_w_avg(_generator())
    spec = _spec()
    path = tmp_path / "g.onnx"
    export_onnx(g, spec, path)
    results = check_parity(g, path, spec)  # raises above 1e-4
    assert [r.batch for r in results] == [1, 5]
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == list(STYLE_INPUTS)
    inputs = example_inputs(spec, batch=7, seed=3)
    z, y, _, z2, _, _ = inputs
    # the controls at their ends: truncation 0 and no mixing, then full mixing at layer 0
    for psi, mix_layer, blend in [(0.0, STYLE_LAYERS, 0.0), (1.0, 0, 0.0), (0.3, 2, 0.5)]:
        feed_inputs = (z, y, torch.full((7,), psi), z2, torch.full((7,), mix_layer), torch.full((7,), blend))
        got = sess.run(["output"], ort_feed(spec, feed_inputs))[0]
        with torch.no_grad():
            want = g(*feed_inputs).numpy()
        assert np.abs(got - want).max() < 1e-4, (psi, mix_layer, blend)


# ------------------------------------------------------------------------------------------------
# the recipe, end to end: train (tiny), evaluate with truncation, export, serve the file
# ------------------------------------------------------------------------------------------------
def _train_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train", "cgan", "--data", str(QUICKDRAW), "--out", str(out), "--steps", str(steps),
        "--batch-size", "6", "--latent-dim", str(LATENT), "--ngf", "8", "--ndf", "8", "--embed-dim", "8",
        "--precision", "fp32", "--device", "cpu", "--log-every", "5", "--sample-every", "100",
        "--ckpt-every", "100", "--ema-decay", "0.9", *extra,
    ]  # fmt: skip


def test_style_recipe_trains_evaluates_with_truncation_and_exports_a_style_card(tmp_path: Path) -> None:
    from service import sampling
    from service.zoo import Zoo
    from training.cli import main
    from training.recipes import load_run

    run, judge = tmp_path / "style", tmp_path / "judge"
    style_args = ["--generator", "style", "--w-dim", "16", "--mapping-layers", "2", "--style-mixing", "0.5"]
    assert main(_train_args(run, 12, *style_args)) == 0
    loaded = load_run(run)
    g = loaded.nets["G"]
    assert isinstance(g, StyleGenerator) and loaded.used_ema
    # the EMA generator's class averages were recomputed from its own mapping network
    with torch.no_grad():
        z = torch.randn(4096, LATENT, generator=torch.Generator().manual_seed(5))
        mean_w = g.mapping(z, torch.ones(4096, dtype=torch.long)).mean(0)
    assert torch.allclose(g.w_avg[1], mean_w, atol=0.05 * float(mean_w.norm()) + 1e-3)

    # evaluation with truncation: its own report, the psi in every sample protocol
    assert main(["train", "classifier", "--data", str(QUICKDRAW), "--out", str(judge), "--steps", "2",
                 "--batch-size", "6", "--device", "cpu", "--precision", "fp32", "--ckpt-every", "100"]) == 0  # fmt: skip
    assert main(["evaluate", str(run), "--judge", str(judge), "--truncation", "0.5", "--limit", "4"]) == 0
    report = json.loads((run / "eval" / "quickdraw_psi0.5.json").read_text())
    accuracy = next(m for m in report["metrics"] if m["name"] == "judge_accuracy_samples")
    assert "truncation psi=0.5" in accuracy["split"]
    assert main(["evaluate", str(run), "--judge", str(judge), "--truncation", "1.5"]) == 1

    # export: the card says which inputs the graph takes; the service runs truncation and mixing
    zoo = tmp_path / "zoo"
    assert main(["export", str(run), "--name", "qd-style", "--out", str(zoo)]) == 0
    card = ModelCard.load(zoo / "qd-style")
    assert card.style is not None and card.style.inputs == list(STYLE_INPUTS)
    assert card.style.layers == STYLE_LAYERS and "style-based" in card.description
    model = Zoo.load(zoo, threads=1).get("qd-style", "sample")
    truncated = sampling.Controls(truncation=0.0)
    rows = sampling.plan_rows(card, 0, LATENT, 2, 4, 11, truncated)
    images = model.run(sampling.feeds(card, rows, LATENT))
    assert np.abs(images - images[:1]).max() < 1e-5  # psi 0: one image for every seed
    rows = sampling.plan_rows(card, 0, LATENT, 2, 3, 11, sampling.Controls())
    plain = model.run(sampling.feeds(card, rows, LATENT))
    with torch.no_grad():
        want = g(torch.from_numpy(rows[:, 5 : 5 + LATENT].copy()), torch.full((3,), 2)).numpy()
    assert np.abs(plain - want).max() < 1e-4  # the served file computes the trained generator
    no_mix = sampling.Controls(mix=sampling.Mix(seed=99, layer=STYLE_LAYERS))
    mixed_none = model.run(
        sampling.feeds(card, sampling.plan_rows(card, 0, LATENT, 2, 3, 11, no_mix), LATENT)
    )
    assert np.abs(mixed_none - plain).max() < 1e-5


def test_dcgan_stays_the_default_and_its_export_takes_z_and_label(tmp_path: Path) -> None:
    from training.recipes import cgan

    cfg = cgan.resolve_data_fields(cgan.Config(data=str(QUICKDRAW), latent_dim=LATENT, ngf=8, embed_dim=8))
    assert cfg.generator == "dcgan" and cgan.export_specs(cfg)["G"].style_layers is None
    spec = cgan.export_specs(cfg)["G"]
    assert len(example_inputs(spec)) == 2
    with pytest.raises(ValueError, match="--truncation needs a style generator"):
        from training.evaluate import torch_sample_fn

        torch_sample_fn(cgan.build_inference_nets(cfg)["G"], truncation=0.5)
    with pytest.raises(Exception, match="style-mixing"):
        cgan.Config(style_mixing=1.5)
