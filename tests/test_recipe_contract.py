"""The recipe contract: a recipe from another package (tests/tiny_recipe.py), added with one registry
line, is trained, evaluated and exported by `transfigure` without evaluate.py or export.py knowing it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import ModelCard
from training import fid
from training.cli import main
from training.recipes import RECIPE_MODULES, recipe_module, recipe_names, register_recipe

FIXTURES = Path(__file__).parent / "fixtures"
FAST = ["--steps", "3", "--num-workers", "0", "--sample-every", "0", "--device", "cpu", "--precision", "fp32"]
needs_inception = pytest.mark.skipif(
    not fid.inception_available(), reason=f"FID Inception wheel not installed: {fid.INSTALL_HINT}"
)


@pytest.fixture
def tiny():
    register_recipe("tiny", "tests.tiny_recipe")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield recipe_module("tiny")
    torch.set_num_threads(threads)
    RECIPE_MODULES.pop("tiny")


def test_register_recipe_adds_a_name_and_refuses_to_rebind_one(tiny) -> None:
    assert "tiny" in recipe_names() and recipe_module("tiny").NAME == "tiny"
    register_recipe("tiny", "tests.tiny_recipe")  # the same line twice is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("cyclegan", "tests.tiny_recipe")
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        recipe_module("nope")
    for bad in ("My-Recipe", "tiny recipe", "2gan", ""):  # names a model card's method could not carry
        with pytest.raises(ValueError, match="lower-case letters"):
            register_recipe(bad, "tests.tiny_recipe")
        assert bad not in recipe_names()


@needs_inception
def test_a_registered_recipe_trains_evaluates_and_exports_through_the_cli(
    tiny, tmp_path: Path, capsys
) -> None:
    run, zoo = tmp_path / "run", tmp_path / "zoo"
    data = FIXTURES / "yosemite"
    assert main(["train", "tiny", "--data", str(data), "--out", str(run), *FAST]) == 0
    assert main(["evaluate", str(run), "--limit", "2", "--judge-limit", "2"]) == 0
    path = run / "eval" / "yosemite.json"  # named after the data folder the recipe returned
    report = json.loads(path.read_text())
    metrics = {m["name"]: m for m in report["metrics"]}
    for key in ("fid", "fid_identity", "kid", "judge_target_share", "content_ssim", "content_cosine"):
        assert metrics[f"{key}_A2B"]["net"] == "G" and np.isfinite(metrics[f"{key}_A2B"]["value"])
    assert report["recipe"] == "tiny" and report["headline"] == {"G": "fid_A2B"}
    assert report["image_sizes"] == {"G": {"256x256": 2}}  # the shared evaluator: each image at its own size
    # the net is a 3x3 conv close to the identity after 3 steps: it keeps most of its input's content
    assert metrics["content_ssim_A2B"]["value"] > 0.5

    capsys.readouterr()
    rc = main(["export", str(run), "--name", "tiny", "--out", str(zoo), "--eval", str(path), "--torchscript"])
    assert rc == 0, capsys.readouterr().err
    card = ModelCard.load(zoo / "tiny")
    assert card.method == "tiny" and card.task == "translate" and card.headline_metric == "fid_A2B"
    assert card.metric("fid_A2B").value == pytest.approx(metrics["fid_A2B"]["value"])
    assert card.training.recipe_config["recipe"] == "tiny" and (zoo / "tiny" / "samples.png").is_file()
    # the exported ONNX file, measured as shipped on the splits the card's recipe config names
    assert main(["evaluate", str(zoo / "tiny"), "--limit", "2", "--judge-limit", "2", "--name", "onnx"]) == 0
    shipped = {m["name"]: m for m in json.loads((zoo / "tiny" / "eval" / "onnx.json").read_text())["metrics"]}
    assert "ONNX file as shipped" in shipped["fid_A2B"]["protocol"]
    assert shipped["fid_A2B"]["value"] == pytest.approx(metrics["fid_A2B"]["value"], rel=1e-3)
