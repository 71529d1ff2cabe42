"""Serving a style-based sample model: the controls of /sample (truncation, mix, interpolate) and
of `transfigure batch`, their validation, and their refusal on a model whose graph cannot take
them. The models are the tiny ONNX graphs of ``tests/tiny_models.py`` (no torch): the style one's
output is known exactly (``tiny_style_reference``)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.card import ModelCard
from service import batch, sampling
from service.imaging import from_tensor, sample_latents
from service.zoo import Zoo
from tests.server_utils import AUTH, error_message, start_server
from tests.tiny_models import TINY_STYLE_LAYERS, make_model, tiny_style_reference

LATENT = 8  # the tiny models' latent size


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("style_zoo")
    make_model(root, "sample")
    make_model(root, "style")
    return root


@pytest.fixture(scope="module")
def zoo(zoo_dir: Path) -> Zoo:
    return Zoo.load(zoo_dir, threads=1)


def _images(card: ModelCard, rows: np.ndarray, zoo: Zoo) -> np.ndarray:
    return zoo.get(card.name).run(sampling.feeds(card, rows, LATENT))


# -- the controls, without a server ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "controls", "message"),
    [
        ("tiny-style", sampling.Controls(truncation=1.5), "truncation must be between 0 and 1"),
        ("tiny-style", sampling.Controls(truncation=float("nan")), "truncation must be between 0 and 1"),
        ("tiny-style", sampling.Controls(truncation=-0.1), "got -0.1"),
        ("tiny-style", sampling.Controls(mix=sampling.Mix(3, TINY_STYLE_LAYERS + 1)), "mix.layer must be between 0 and 2"),
        ("tiny-style", sampling.Controls(mix=sampling.Mix(-1, 1)), "mix.seed must be between 0 and 2**63-1"),
        ("tiny-style", sampling.Controls(interpolate=sampling.Interpolation(3, 1)), "interpolate.steps must be between 2 and 64"),
        ("tiny-style", sampling.Controls(interpolate=sampling.Interpolation(3, 65)), "got 65"),
        (
            "tiny-style",
            sampling.Controls(mix=sampling.Mix(3, 1), interpolate=sampling.Interpolation(3, 4)),
            "mix and interpolate cannot be combined",
        ),
        ("tiny-sample", sampling.Controls(truncation=0.5), "model 'tiny-sample' does not support truncation"),
        ("tiny-sample", sampling.Controls(mix=sampling.Mix(3, 1)), "does not support style mixing"),
        ("tiny-sample", sampling.Controls(interpolate=sampling.Interpolation(3, 4)), "does not support interpolate"),
    ],
)  # fmt: skip
def test_bad_or_unsupported_controls_are_named(zoo: Zoo, model: str, controls, message: str) -> None:
    with pytest.raises(sampling.ControlError) as e:
        sampling.check_controls(zoo.get(model).card, controls, max_samples=64)
    assert message in str(e.value)


def test_a_dcgan_model_samples_as_before_and_ignores_the_style_columns(zoo: Zoo) -> None:
    card = zoo.get("tiny-sample").card
    sampling.check_controls(card, sampling.Controls(truncation=1.0), 64)  # psi 1 is no truncation
    rows = sampling.plan_rows(card, 0, LATENT, 1, 3, 5, sampling.Controls())
    feeds = sampling.feeds(card, rows, LATENT)
    assert set(feeds) == {"z", "label"}
    np.testing.assert_array_equal(feeds["z"], sample_latents(LATENT, 3, 5))


def test_truncation_mix_and_interpolation_run_what_the_graph_computes(zoo: Zoo) -> None:
    card = zoo.get("tiny-style").card
    layers = TINY_STYLE_LAYERS
    # truncation 0: the class's average image for every seed
    rows = sampling.plan_rows(card, 0, LATENT, 2, 5, 7, sampling.Controls(truncation=0.0))
    out = _images(card, rows, zoo)
    assert np.abs(out - out[:1]).max() < 1e-6
    # mixing at the last layer + 1 = layers is no mixing; at 0 it is the second seed's sample
    plain = _images(card, sampling.plan_rows(card, 0, LATENT, 2, 4, 7, sampling.Controls()), zoo)
    none = sampling.Controls(mix=sampling.Mix(seed=9, layer=layers))
    assert np.abs(_images(card, sampling.plan_rows(card, 0, LATENT, 2, 4, 7, none), zoo) - plain).max() < 1e-6
    second = _images(card, sampling.plan_rows(card, 0, LATENT, 2, 4, 9, sampling.Controls()), zoo)
    full = sampling.Controls(mix=sampling.Mix(seed=9, layer=0))
    assert (
        np.abs(_images(card, sampling.plan_rows(card, 0, LATENT, 2, 4, 7, full), zoo) - second).max() < 1e-6
    )
    # interpolation: a strip from seed 7's first sample to seed 9's, the graph's exact blend
    strip = sampling.Controls(interpolate=sampling.Interpolation(seed=9, steps=5))
    rows = sampling.plan_rows(card, 0, LATENT, 2, 1, 7, strip)
    feeds = sampling.feeds(card, rows, LATENT)
    out = zoo.get("tiny-style").run(feeds)
    assert out.shape[0] == 5 and np.abs(out - tiny_style_reference(feeds)).max() < 1e-5
    assert np.abs(out[0] - plain[0]).max() < 1e-6 and np.abs(out[-1] - second[0]).max() < 1e-6
    np.testing.assert_allclose(feeds["blend"], np.linspace(0, 1, 5), atol=1e-7)


def test_rows_for_sample_batch_are_checked_per_model(zoo: Zoo) -> None:
    cards = [zoo.get("tiny-sample").card, zoo.get("tiny-style").card]
    good = sampling.plan_rows(cards[1], 1, LATENT, 0, 2, 3, sampling.Controls(truncation=0.5))
    sampling.check_rows(good, cards, LATENT)
    bad_psi = good.copy()
    bad_psi[:, sampling.PSI] = 2.0
    with pytest.raises(sampling.ControlError, match="psi"):
        sampling.check_rows(bad_psi, cards, LATENT)
    bad_layer = good.copy()
    bad_layer[:, sampling.MIX_LAYER] = TINY_STYLE_LAYERS + 1
    with pytest.raises(sampling.ControlError, match="style layer 0..2"):
        sampling.check_rows(bad_layer, cards, LATENT)
    with pytest.raises(sampling.ControlError, match=f"N x {sampling.row_width(LATENT)}"):
        sampling.check_rows(good[:, :-1], cards, LATENT)


# -- transfigure batch -----------------------------------------------------------------------------


def _batch(zoo_dir: Path, *args: object) -> int:
    return batch.main(["--models-dir", str(zoo_dir), "--no-progress", *map(str, args)])


def test_batch_sampling_takes_truncation_and_mixing(
    tmp_path: Path, zoo_dir: Path, zoo: Zoo, capsys: pytest.CaptureFixture[str]
) -> None:
    card = zoo.get("tiny-style").card
    out = tmp_path / "out"
    args = ["--model", "tiny-style", "--label", "cat", "--n", 3, "--seed", 5, "--output", out]
    assert _batch(zoo_dir, *args, "--truncation", 0.5, "--mix-seed", 40, "--mix-layer", 1) == 0
    files = sorted((out / "cat").glob("*.png"))
    assert len(files) == 3
    for i, f in enumerate(files):  # image i: seed 5 + i mixed with seed 40 + i, as /sample n=1 gives it
        controls = sampling.Controls(truncation=0.5, mix=sampling.Mix(40 + i, 1))
        rows = sampling.plan_rows(card, 0, LATENT, 1, 1, 5 + i, controls)
        want = from_tensor(_images(card, rows, zoo), card.output)[0]
        np.testing.assert_array_equal(np.asarray(Image.open(f)).reshape(want.shape), want)
    assert _batch(zoo_dir, *args, "--overwrite", "--mix-seed", 1) == 2
    assert "needs both --mix-seed and --mix-layer" in capsys.readouterr().err
    assert _batch(zoo_dir, *args, "--overwrite", "--truncation", 2) == 2
    assert "truncation must be between 0 and 1" in capsys.readouterr().err
    dcgan = ["--model", "tiny-sample", "--label", "cat", "--n", 1, "--output", tmp_path / "d"]
    assert _batch(zoo_dir, *dcgan, "--truncation", 0.5) == 2
    assert "does not support truncation" in capsys.readouterr().err


# -- the HTTP service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with start_server(
        zoo_dir, tmp_path_factory.mktemp("style_server"), TRANSFIGURE_API_TOKEN=AUTH["Authorization"][7:]
    ) as s:
        yield s.url


@pytest.mark.integration
def test_sample_endpoint_controls_and_their_errors(server: str, zoo: Zoo) -> None:
    card = zoo.get("tiny-style").card
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as http:

        def post(**body) -> httpx.Response:
            return http.post("/sample", json={"model": "tiny-style", "label": "fish", "seed": 7, **body})

        def pixels(r: httpx.Response) -> np.ndarray:
            assert r.status_code == 200, r.text
            return np.asarray(Image.open(io.BytesIO(r.content)))

        def images(r: httpx.Response) -> list[np.ndarray]:
            assert r.status_code == 200, r.text
            return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in r.json()["images"]]

        plain = images(post(n=4, grid=False))
        zero = images(post(n=4, truncation=0, grid=False))
        assert all(np.array_equal(zero[0], im) for im in zero)  # psi 0: one image for every seed
        assert not np.array_equal(plain[0], plain[1])
        # mixing at the number of layers is no mixing; at 0 it is the second seed's sample
        same = images(post(n=4, grid=False, mix={"seed": 3, "layer": TINY_STYLE_LAYERS}))
        assert all(np.array_equal(a, b) for a, b in zip(same, plain, strict=True))
        second = images(
            http.post(
                "/sample", json={"model": "tiny-style", "label": "fish", "seed": 3, "n": 4, "grid": False}
            )
        )
        swapped = images(post(n=4, grid=False, mix={"seed": 3, "layer": 0}))
        assert all(np.array_equal(a, b) for a, b in zip(swapped, second, strict=True))
        # interpolate: one strip of `steps` images from seed 7's first sample to seed 3's
        size = card.output_size
        strip = pixels(post(interpolate={"seed": 3, "steps": 5}))
        assert strip.shape[:2] == (size + 4, 5 * (size + 2) + 2)
        first, last = strip[2 : 2 + size, 2 : 2 + size], strip[2 : 2 + size, -2 - size : -2]
        np.testing.assert_array_equal(first.reshape(plain[0].shape), plain[0])
        np.testing.assert_array_equal(last.reshape(second[0].shape), second[0])

        for body, status, message in [
            ({"truncation": 1.5}, 400, "truncation must be between 0 and 1"),
            ({"mix": {"seed": 3, "layer": 7}}, 400, "mix.layer must be between 0 and 2"),
            ({"interpolate": {"seed": 3, "steps": 1}}, 400, "interpolate.steps must be between 2 and 64"),
            ({"interpolate": {"seed": 3, "steps": 4}, "n": 4}, 400, "n does not apply with interpolate"),
            (
                {"mix": {"seed": 3, "layer": 1}, "interpolate": {"seed": 3, "steps": 4}},
                400,
                "cannot be combined",
            ),
            ({"model": "tiny-sample", "truncation": 0.5}, 400, "'tiny-sample' does not support truncation"),
            ({"model": "tiny-sample", "mix": {"seed": 3, "layer": 1}}, 400, "does not support style mixing"),
        ]:
            r = post(**body)
            assert r.status_code == status and message in error_message(r), (body, r.text)
        assert (
            http.post("/sample", json={"model": "tiny-sample", "label": "fish", "seed": 7}).status_code == 200
        )
