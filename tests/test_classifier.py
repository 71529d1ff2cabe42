"""The classifier judge: trains on a tiny separable set, loads back for evaluation, judges samples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training.networks.conditional import SampleClassifier
from training.recipes import classifier, load_run


def _half_bright(label: int, n: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """Class 0: bright top half; class 1: bright bottom half; both with noise (uint8)."""
    img = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    img[:, half] = rng.integers(180, 256, (n, size // 2, size)).astype(np.uint8)
    return img


@pytest.fixture
def separable(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for label, name in enumerate(["bottom_dark", "top_dark"]):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(_half_bright(label, 30, rng)):
            Image.fromarray(img, mode="L").save(root / name / f"{i:03d}.png")
    return root


def test_classifier_reaches_high_accuracy_and_loads_as_a_judge(
    separable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    out = tmp_path / "run"
    argv = ["train", "classifier", "--data", str(separable), "--out", str(out), "--steps", "40",
            "--batch-size", "16", "--width", "8", "--precision", "fp32", "--device", "cpu",
            "--log-every", "20", "--sample-every", "20", "--test-fraction", "0.2"]  # fmt: skip
    assert main(argv) == 0
    printed = re.search(r"test accuracy: ([0-9.]+) on (\d+) held-out images", capsys.readouterr().out)
    assert printed and float(printed[1]) >= 0.9 and printed[2] == "12"  # 20 % of 2 x 30

    judge, cfg = classifier.load_judge(out)
    assert cfg.classes == ("bottom_dark", "top_dark") and cfg.channels == 1
    acc, n = classifier.held_out_accuracy(judge, cfg)
    assert acc == float(printed[1]) and n == 12
    # evaluation's generic loader finds the net under "C"; there is nothing to export
    assert isinstance(load_run(out).nets["C"], SampleClassifier)
    assert classifier.export_specs(cfg) == {}
    assert (out / "samples" / "step_0000040.png").is_file()


class _FakeGenerator(nn.Module):
    """Draws the separable fixture's classes; ``wrong`` always draws class 0."""

    num_classes, latent_dim = 2, 4

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.wrong = wrong

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng(int(z.abs().sum() * 1000) % 2**32)
        imgs = [_half_bright(0 if self.wrong else int(y), 1, rng)[0] for y in label]
        return torch.from_numpy(np.stack(imgs)[:, None]).float() / 127.5 - 1.0


def test_judge_samples_reports_per_class_agreement(separable: Path, tmp_path: Path) -> None:
    from training.loop import train
    from training.recipes.cgan import resolve_data_fields

    cfg = classifier.Config(
        data=str(separable), out=str(tmp_path / "run"), steps=40, batch_size=16, width=8,
        precision="fp32", device="cpu", sample_every=0, log_every=40, test_fraction=0.2,
    )  # fmt: skip
    assert train("classifier", resolve_data_fields(cfg), classifier.ClassifierRecipe) == 0
    judge, _ = classifier.load_judge(tmp_path / "run")
    assert classifier.judge_samples(judge, _FakeGenerator(), n_per_class=10) == {0: 1.0, 1: 1.0}
    assert classifier.judge_samples(judge, _FakeGenerator(wrong=True), n_per_class=10) == {0: 1.0, 1: 0.0}


def test_random_shift_moves_content_and_keeps_shape() -> None:
    x = torch.full((3, 1, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0
    shifted = classifier.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # the square stays inside
    assert classifier.random_shift(x, 0) is x


def test_load_judge_refuses_other_recipes(tmp_path: Path) -> None:
    from training.loop import train
    from training.recipes import cgan

    quickdraw = Path(__file__).parent / "fixtures" / "quickdraw"
    cfg = cgan.resolve_data_fields(
        cgan.Config(data=str(quickdraw), out=str(tmp_path / "g"), steps=1, batch_size=4, ngf=8, ndf=8,
                    latent_dim=8, embed_dim=4, precision="fp32", device="cpu", sample_every=0)
    )  # fmt: skip
    train("cgan", cfg, cgan.CGANRecipe)
    with pytest.raises(ValueError, match="not a classifier run"):
        classifier.load_judge(tmp_path / "g")
