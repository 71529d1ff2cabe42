"""PSNR/SSIM helpers (training/quality.py): hand-made cases with known answers, and the protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training import quality

SR_FIXTURES = Path(__file__).parent / "fixtures" / "sr"


def _rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_psnr_identity_is_inf_and_ssim_is_one() -> None:
    y = quality.rgb_to_y(_rng_image(40, 48))
    assert quality.psnr(y, y) == math.inf
    assert quality.ssim(y, y) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_psnr_matches_the_analytical_value_for_a_known_noise(sigma: float) -> None:
    # Gaussian noise of std sigma: MSE -> sigma^2, so PSNR -> 10 log10(255^2 / sigma^2)
    rng = np.random.default_rng(1)
    a = np.full((400, 400), 128.0)
    b = a + rng.normal(0.0, sigma, size=a.shape)
    expected = 10 * math.log10(255.0**2 / sigma**2)
    assert quality.psnr(a, b) == pytest.approx(expected, abs=0.05)


def test_psnr_of_a_constant_offset_is_exact() -> None:
    a = np.zeros((10, 10))
    assert quality.psnr(a, a + 5.0) == pytest.approx(20 * math.log10(255 / 5))


def test_ssim_of_a_constant_shift_matches_the_luminance_term() -> None:
    # With b = a + d, variances and covariance are equal, so SSIM reduces to the luminance term
    # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), which is exact on constant images.
    a = np.full((32, 32), 100.0)
    b = a + 20.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert quality.ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_drops_with_noise_and_is_symmetric() -> None:
    rng = np.random.default_rng(2)
    a = quality.rgb_to_y(_rng_image(64, 64))
    weak = a + rng.normal(0, 3, a.shape)
    strong = a + rng.normal(0, 30, a.shape)
    assert 1.0 > quality.ssim(a, weak) > quality.ssim(a, strong) > 0.0
    assert quality.ssim(a, strong) == pytest.approx(quality.ssim(strong, a))


def _fixture_y_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(bicubic x4, original) Y channels of the committed Set5 / T91 images, border shaved."""
    pairs = []
    for path in quality.list_images(SR_FIXTURES):
        hr = quality.crop_to_multiple(quality.load_rgb_array(path), 4)
        up = quality.bicubic_upscale(quality.bicubic_downscale(hr, 4), 4)
        pairs.append((quality.shave(quality.rgb_to_y(up), 4), quality.shave(quality.rgb_to_y(hr), 4)))
    return pairs


def test_ssim_and_psnr_are_the_scikit_image_reference_with_the_published_settings() -> None:
    # The SR literature's SSIM: Gaussian window sigma 1.5 (11x11), population covariances, L = 255.
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = _fixture_y_pairs()
    assert len(pairs) == 5
    for y_sr, y_hr in pairs:
        reference = structural_similarity(
            y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert quality.ssim(y_sr, y_hr) == pytest.approx(reference, abs=1e-12)
        # the settings matter: scikit-image's defaults (7x7 uniform window, sample covariances)
        # give a visibly different number on the same images
        default = structural_similarity(y_sr, y_hr, data_range=255)
        assert abs(quality.ssim(y_sr, y_hr) - default) > 1e-3
        assert quality.psnr(y_sr, y_hr) == pytest.approx(
            peak_signal_noise_ratio(y_hr, y_sr, data_range=255), abs=1e-10
        )


def test_ssim_rejects_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="same shape"):
        quality.ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="2-D"):
        quality.ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        quality.ssim(np.zeros((10, 40)), np.zeros((10, 40)))


def test_y_channel_is_bt601() -> None:
    img = np.zeros((1, 3, 3), np.uint8)
    img[0, 1] = 255  # white
    img[0, 2] = (255, 0, 0)  # pure red
    y = quality.rgb_to_y(img)[0]
    assert y[0] == pytest.approx(16.0)
    assert y[1] == pytest.approx(235.0)
    assert y[2] == pytest.approx(16.0 + 65.481)
    # float [0, 1] input gives the same as uint8
    assert np.allclose(quality.rgb_to_y(img.astype(np.float64) / 255.0), quality.rgb_to_y(img))


def test_sr_metrics_crop_hr_to_the_scale_and_shave_the_border() -> None:
    hr = _rng_image(37, 42)
    cropped = quality.crop_to_multiple(hr, 4)
    assert cropped.shape == (36, 40, 3)
    sr = cropped.copy()
    sr[:4] = 0  # damage only the shaved border: the score must not see it
    assert quality.sr_metrics(sr, hr, 4)["psnr_y"] == math.inf
    sr[5, 5] = 255 - sr[5, 5]  # inside: now it must
    assert quality.sr_metrics(sr, hr, 4)["psnr_y"] < math.inf
    with pytest.raises(ValueError, match="exactly 4"):
        quality.sr_metrics(hr, hr, 4)  # uncropped: 37x42 is not 4x anything


def test_bicubic_downscale_makes_exact_sizes() -> None:
    lr = quality.bicubic_downscale(_rng_image(37, 42), 4)
    assert lr.shape == (9, 10, 3) and lr.dtype == np.uint8
    assert quality.bicubic_upscale(lr, 4).shape == (36, 40, 3)


def test_bicubic_baseline_matches_published_set5_values_on_the_fixture() -> None:
    # Set5 x4 bicubic Y-PSNR per image, as tabulated in the SR literature (e.g. SRCNN, EDSR
    # supplementary material): butterfly 22.10 dB, head 31.59 dB. PIL BICUBIC on uint8 follows
    # the MATLAB imresize protocol closely enough to land within a few hundredths of a dB.
    files = [SR_FIXTURES / "butterfly.png", SR_FIXTURES / "head.png"]
    report = quality.evaluate_upscaler(quality.bicubic_upscaler(4), files, 4)
    assert report.per_image["butterfly.png"]["psnr_y"] == pytest.approx(22.10, abs=0.1)
    assert report.per_image["head.png"]["psnr_y"] == pytest.approx(31.59, abs=0.1)
    assert 0.6 < report.mean["ssim_y"] < 0.9


def test_bicubic_baseline_and_a_model_share_one_code_path() -> None:
    # A "model" that is bicubic upsampling in disguise (a torch module calling the same PIL
    # function) must score exactly what the baseline scores: both go through evaluate_upscaler
    # with the same LR inputs, cropping, rounding, Y conversion and shaving.
    import torch

    class PilBicubic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            up = quality.bicubic_upscale(lr, 4)
            return torch.from_numpy(up).permute(2, 0, 1)[None].float() / 255

    files = quality.list_images(SR_FIXTURES)
    baseline = quality.evaluate_upscaler(quality.bicubic_upscaler(4), files, 4)
    model = quality.evaluate_upscaler(quality.torch_upscaler(PilBicubic()), files, 4)
    assert baseline.per_image == model.per_image
    # and a different model gives a different number through the same path
    nearest = torch.nn.Upsample(scale_factor=4, mode="nearest")
    worse = quality.evaluate_upscaler(quality.torch_upscaler(nearest), files, 4)
    assert worse.mean["psnr_y"] < baseline.mean["psnr_y"]


def test_list_images_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no readable images"):
        quality.evaluate_upscaler(quality.bicubic_upscaler(4), tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        quality.evaluate_upscaler(quality.bicubic_upscaler(4), tmp_path / "missing", 4)


def test_sharpness_ratio_is_one_for_the_original_and_low_for_bicubic_blur() -> None:
    hr = quality.crop_to_multiple(quality.load_rgb_array(SR_FIXTURES / "butterfly.png"), 4)
    y = quality.rgb_to_y(hr)
    assert quality.sharpness_ratio(y, y) == pytest.approx(1.0)
    blurred = quality.bicubic_upscale(quality.bicubic_downscale(hr, 4), 4)
    ratio = quality.sr_metrics(blurred, hr, 4)["sharpness_y"]
    assert 0.0 < ratio < 0.5  # x4 bicubic loses most of the high-frequency energy
    noisy = np.clip(hr.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, hr.shape), 0, 255)
    assert quality.sr_metrics(noisy.astype(np.uint8), hr, 4)["sharpness_y"] > 1.0
