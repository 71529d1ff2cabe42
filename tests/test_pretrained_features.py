"""The frozen pretrained feature network (EfficientNet-Lite0 from its wheel), the losses and the
projected discriminator built on it, and the independent from-scratch domain judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.domain_cnn import JudgeSettings, fit_domain_cnn
from training.evaluate import ImageRef
from training.losses import channel_statistics, feature_content_loss, sliced_wasserstein_loss, statistics_loss
from training.networks.efficientnet_lite import FEATURE_CHANNELS, Lite0Features, load_lite0
from training.networks.projected import ProjectedDiscriminator

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def lite0():
    return load_lite0()


def _photo(name: str, size: int = 224) -> torch.Tensor:
    im = (
        Image.open(FIXTURES / "monet" / "photo_jpg" / name).convert("RGB").resize((size, size), Image.BICUBIC)
    )
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_lite0_weights_from_the_wheel_match_the_reference_forward_pass(lite0) -> None:
    ref = json.loads((FIXTURES / "lite0_reference.json").read_text())["images"]
    features = Lite0Features(lite0)
    for name, want in ref.items():
        x = _photo(name)
        with torch.no_grad():
            logits = lite0(x)[0]
            feats = features(x)
        values, classes = logits.topk(5)
        assert classes.tolist() == want["top5"], name
        np.testing.assert_allclose(values.numpy(), want["top5_logits"], atol=2e-3)
        np.testing.assert_allclose([float(f.mean()) for f in feats], want["feature_means"], atol=2e-4)
        np.testing.assert_allclose([float(f.std()) for f in feats], want["feature_stds"], atol=2e-3)
    # a seashore photo is called a seashore (ImageNet class 978): the weights are the trained ones
    assert ref["000ded5c41.jpg"]["top5"][0] == 978


def test_lite0_features_are_frozen_multi_scale_and_pass_gradients_to_the_image(lite0) -> None:
    features = Lite0Features(lite0).train()  # asking for training mode keeps the BN statistics
    assert not features.training and not any(p.requires_grad for p in features.parameters())
    x = torch.zeros(2, 3, 128, 96, requires_grad=True)
    feats = features(x)
    assert [f.shape[1] for f in feats] == list(FEATURE_CHANNELS)
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 24), (16, 12), (8, 6), (4, 3)]
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_projected_discriminator_trains_its_heads_only_and_judges_patches() -> None:
    d = ProjectedDiscriminator(FEATURE_CHANNELS, ndf=16, seed=3)
    feats = [torch.randn(2, c, s, s) for c, s in zip(FEATURE_CHANNELS, (16, 8, 4, 2), strict=True)]
    logits = d(feats)
    assert [tuple(t.shape) for t in logits] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    trainable = {n for n, p in d.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    again = ProjectedDiscriminator(FEATURE_CHANNELS, ndf=16, seed=3)
    assert torch.equal(d.state_dict()["proj0"], again.state_dict()["proj0"])  # fixed by the seed
    assert not torch.equal(d.proj0, ProjectedDiscriminator(FEATURE_CHANNELS, ndf=16, seed=4).proj0)


def test_statistics_loss_is_zero_at_the_target_and_pulls_towards_it() -> None:
    torch.manual_seed(0)
    target_feats = [torch.randn(4, 8, 6, 6) * 2 + 1]
    target = [(m.mean(0, keepdim=True), s.mean(0, keepdim=True)) for m, s in channel_statistics(target_feats)]
    same = [(m, s) for m, s in target]
    assert float(statistics_loss(same, target)) == pytest.approx(0.0, abs=1e-10)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    before = float(statistics_loss(channel_statistics([x]), target).detach())
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        statistics_loss(channel_statistics([x]), target).backward()
        opt.step()
    assert float(statistics_loss(channel_statistics([x]), target).detach()) < 0.05 * before


def test_sliced_wasserstein_ignores_where_features_are_but_not_a_blob_that_fakes_the_moments() -> None:
    torch.manual_seed(0)
    target = torch.randn(1, 8, 16, 16)
    shuffled = target.flatten(2)[:, :, torch.randperm(256)].view_as(target)  # same texture, moved around
    assert float(sliced_wasserstein_loss([shuffled], [target])) == pytest.approx(0.0, abs=1e-10)
    # a flat map with one bright blob, scaled to the target's per-channel mean and std: the moments
    # loss is (almost) satisfied, the distribution is not
    blob = torch.zeros(1, 8, 16, 16)
    blob[..., :3, :3] = 1.0
    flat = blob.flatten(2)
    z = (flat - flat.mean(2, keepdim=True)) / flat.std(2, unbiased=False, keepdim=True)
    t = target.flatten(2)
    faked = (z * t.std(2, unbiased=False, keepdim=True) + t.mean(2, keepdim=True)).view_as(target)
    stats_t = channel_statistics([target])
    assert float(statistics_loss(channel_statistics([faked]), stats_t)) < 1e-6
    assert float(sliced_wasserstein_loss([faked], [target])) > 0.1


def test_feature_content_loss_compares_only_the_chosen_layers() -> None:
    a = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    b = [torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    assert float(feature_content_loss(a, b, (1,))) == 0.0
    assert float(feature_content_loss(a, b, (0,))) == pytest.approx(1.0)


def _domain(folder: Path, colour: tuple[int, int, int], n: int, seed: int) -> list[ImageRef]:
    """Noise images around one colour, with a texture of vertical (red) or no stripes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(n):
        img = np.clip(rng.normal(colour, 40, size=(96, 112, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(img).save(path)
        refs.append(ImageRef(path))
    return refs


def test_the_from_scratch_judge_learns_two_domains_and_calls_unseen_images(tmp_path: Path) -> None:
    train_a = _domain(tmp_path / "a", (90, 140, 60), 8, 0)  # green-ish
    train_b = _domain(tmp_path / "b", (200, 210, 230), 8, 1)  # snow-ish
    settings = JudgeSettings(size=64, load=72, steps=40, batch=8, width=8)
    judge = fit_domain_cnn(train_a, train_b, settings)
    assert judge.steps == 40 and "40 steps of 8 images" in judge.describe()
    test_a = _domain(tmp_path / "ta", (90, 140, 60), 6, 2)
    test_b = _domain(tmp_path / "tb", (200, 210, 230), 6, 3)

    def probs(refs):
        return judge.prob_b(torch.from_numpy(np.stack([r.load() for r in refs])).permute(0, 3, 1, 2))

    assert judge.predicts(probs(test_b), "B").mean() == 1.0
    assert judge.predicts(probs(test_a), "A").mean() == 1.0
    # few training images: at most `epochs` passes over them, not the full step budget
    assert JudgeSettings().steps_for(4) == 3 and JudgeSettings().steps_for(10_000) == 600


def test_a_fitted_judge_is_kept_on_disk_and_found_again(tmp_path: Path) -> None:
    from training.domain_cnn import clear_judges, domain_cnn_judge

    train_a = _domain(tmp_path / "a", (90, 140, 60), 4, 0)
    train_b = _domain(tmp_path / "b", (200, 210, 230), 4, 1)
    settings = JudgeSettings(size=64, load=72, steps=5, batch=8, width=8)
    first = domain_cnn_judge(train_a, train_b, tmp_path / "cache", settings)
    (saved,) = (tmp_path / "cache").glob("domain_cnn_*.pt")
    clear_judges()
    again = domain_cnn_judge(train_a, train_b, tmp_path / "cache", settings)
    assert again is not first and saved.is_file()
    x8 = torch.from_numpy(np.stack([r.load() for r in train_b])).permute(0, 3, 1, 2)
    np.testing.assert_allclose(again.prob_b(x8), first.prob_b(x8), rtol=1e-6)
    assert again.describe() == first.describe()
