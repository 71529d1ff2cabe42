"""Recipe configs: one name per knob, choices checked in one place, former names still read, argv."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from models import card_paths
from training.config import ConfigError, check_value_types, config_from_args, config_from_dict, config_to_argv
from training.recipes import RECIPE_MODULES, recipe_module

RECIPES = sorted(RECIPE_MODULES)
GAN_RECIPES = ["cgan", "cyclegan", "pix2pix", "srgan"]


def _parse(recipe: str, argv: list[str]):
    parser = argparse.ArgumentParser()
    recipe_module(recipe).add_arguments(parser)
    return config_from_args(recipe_module(recipe).Config, parser.parse_args(argv))


@pytest.mark.parametrize("recipe", GAN_RECIPES)
def test_every_gan_recipe_has_the_same_adversarial_knobs(recipe: str) -> None:
    config_cls = recipe_module(recipe).Config
    names = {f.name for f in dataclasses.fields(config_cls)}
    assert {"gan_loss", "real_label", "gp_weight"} <= names
    config, explicit = _parse(recipe, ["--gan-loss", "wgan-gp", "--gp-weight", "5"])
    assert (config.gan_loss, config.gp_weight, explicit) == ("wgan-gp", 5.0, {"gan_loss", "gp_weight"})
    assert _parse(recipe, ["--gan-loss", "relativistic"])[0].gan_loss == "ragan"  # aliases: canonical
    with pytest.raises(ConfigError, match="label smoothing"):
        config_cls(gan_loss="hinge", real_label=0.9)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_choice_field_refuses_other_values_in_code_and_on_the_command_line(recipe: str, capsys) -> None:
    config_cls = recipe_module(recipe).Config
    choice_fields = [f for f in dataclasses.fields(config_cls) if "choices" in f.metadata]
    assert choice_fields  # every recipe has some (precision at least)
    for f in choice_fields:
        bad = "nonsense" if isinstance(f.metadata["choices"][0], str) else 999
        with pytest.raises(ConfigError, match=f"unknown {f.name.replace('_', ' ')} {bad!r}"):
            config_cls(**{f.name: bad})
        with pytest.raises(SystemExit):
            _parse(recipe, ["--" + f.name.replace("_", "-"), str(bad)])
        assert "invalid choice" in capsys.readouterr().err
        for good in f.metadata["choices"]:
            assert getattr(config_cls(**{f.name: good}), f.name) == good


def test_the_cgan_knobs_former_names_still_work_in_saved_configs_and_on_the_command_line() -> None:
    cgan = recipe_module("cgan").Config
    saved = {"loss": "vanilla", "label_smoothing": 0.1, "ngf": 16, "no_longer_a_knob": 1}
    config = config_from_dict(cgan, saved)
    assert (config.gan_loss, config.real_label, config.ngf) == ("vanilla", pytest.approx(0.9), 16)
    config, explicit = _parse("cgan", ["--loss", "vanilla", "--label-smoothing", "0.1"])
    assert (config.gan_loss, config.real_label) == ("vanilla", pytest.approx(0.9))
    assert explicit == {"gan_loss", "real_label"}  # what --resume compares


def test_help_shows_only_the_current_names(capsys) -> None:
    parser = argparse.ArgumentParser()
    recipe_module("cgan").add_arguments(parser)
    parser.print_help()
    text = capsys.readouterr().out
    assert "--gan-loss" in text and "--real-label" in text and "--gp-weight" in text
    assert "--loss" not in text and "--label-smoothing" not in text


@pytest.mark.parametrize("card_path", card_paths(), ids=[p.parent.name for p in card_paths()])
def test_shipped_cards_rebuild_their_configs(card_path) -> None:
    saved = json.loads(card_path.read_text())["training"]["recipe_config"]
    config_cls = recipe_module(saved["recipe"]).Config
    config = config_from_dict(config_cls, saved["config"])
    for key, value in saved["config"].items():
        if key in config_cls.renamed:  # a former name: the value reaches the current field
            renamed = config_cls.renamed[key]
            expected = renamed.convert(value) if renamed.convert else value
            assert getattr(config, renamed.new) == pytest.approx(expected), key
        else:
            assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), key


@pytest.mark.parametrize("recipe", RECIPES)
def test_config_to_argv_is_parsed_back_to_the_same_values(recipe: str) -> None:
    config_cls = recipe_module(recipe).Config
    values = {"steps": 7, "seed": 3, "ema_decay": 0.5, "resume": True, "precision": "fp32", "out": "runs/x"}
    by_type = {"int | None": None, "bool": False, "tuple[str, ...]": ("a", "b"), "float": 0.25}
    for f in dataclasses.fields(config_cls):  # real_label: only some losses take smoothing
        if str(f.type) in by_type and f.name not in values and f.name != "real_label":
            values[f.name] = by_type[str(f.type)]
    config, explicit = _parse(recipe, config_to_argv(config_cls, values))
    assert explicit == set(values)
    assert {k: getattr(config, k) for k in values} == values
    with pytest.raises(ConfigError, match="no field 'stepz'"):
        config_to_argv(config_cls, {"stepz": 1})


def test_value_types_are_checked_against_the_fields() -> None:
    config_cls = recipe_module("cyclegan").Config
    check_value_types(config_cls, {"lambda_cycle": 3, "load_size": None, "d_size": 128, "flip": False})
    for bad in ({"load_size": "286"}, {"flip": 1}, {"ngf": True}, {"lambda_cycle": "3"}):
        with pytest.raises(ConfigError, match="expected"):
            check_value_types(config_cls, bad)
