"""The model card contract: round trip, field-level errors, task rules, sha256, schema in sync."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from models import card_paths
from models.card import (
    SCHEMA_VERSION,
    STYLE_INPUTS,
    BarCriterion,
    CardError,
    ModelCard,
    QualityBar,
    sha256_file,
)
from models.schema import SCHEMA_PATH, render


def _valid(task: str = "translate") -> dict:
    card = {
        "name": "summer2winter",
        "task": "translate",
        "method": "cyclegan",
        "description": "Summer to winter, Yosemite.",
        "architecture": "ResnetGenerator(ngf=32, n_blocks=6)",
        "parameters": 1234,
        "macs_256": 5678,
        "onnx_file": "model.onnx",
        "sha256": "0" * 64,
        "opset": 17,
        "input": {"channels": 3, "range": [-1, 1], "multiple_of": 4, "native_size": 128},
        "output": {"channels": 3, "range": [-1, 1]},
        "training": {
            "dataset": "summer2winter_yosemite",
            "source": "Jacklu0831/GAN-Projects",
            "license": "research use",
            "split_sizes": {"trainA": 500, "trainB": 500},
            "recipe_config": {"ngf": 32},
            "steps": 10,
            "wall_time_s": 1.5,
            "hardware": "cpu",
            "commit": "abc",
        },
        "metrics": [
            {"name": "fid", "value": 70.0, "split": "testA->testB", "protocol": "p", "command": "c"},
        ],
        "headline_metric": "fid",
    }
    if task == "sample":
        card.update(task="sample", method="cgan", classes=["cat", "fish"], latent_dim=64, output_size=28)
        card["output"] = {"channels": 1, "range": [-1, 1]}
        del card["input"]
    if task == "upscale":
        card.update(task="upscale", method="srgan", scale=4)
        card["input"] = {"channels": 3, "range": [0, 1], "multiple_of": 1, "native_size": 32}
        card["output"] = {"channels": 3, "range": [0, 1]}
    return card


@pytest.mark.parametrize("task", ["translate", "sample", "upscale"])
def test_valid_card_round_trips(tmp_path: Path, task: str) -> None:
    card = ModelCard.from_dict(_valid(task))
    card.save(tmp_path)
    again = ModelCard.load(tmp_path / "card.json")
    assert again == card
    assert json.loads((tmp_path / "card.json").read_text())["task"] == task


@pytest.mark.parametrize(
    "field", ["name", "task", "method", "description", "parameters", "sha256", "opset", "output", "training"]
)
def test_missing_field_is_named(tmp_path: Path, field: str) -> None:
    data = _valid()
    del data[field]
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CardError) as e:
        ModelCard.load(path)
    assert str(path) in str(e.value)
    assert f"field '{field}': missing" in str(e.value)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("parameters",), "many", "parameters"),
        (("sha256",), "xyz", "sha256"),
        (("task",), "paint", "task"),
        (("input", "channels"), 4, "input.channels"),
        (("input", "range"), [0, 255], "input.range"),
        (("input", "multiple_of"), 0, "input.multiple_of"),
        (("training", "steps"), -1, "training.steps"),
        (("metrics", 0, "value"), "good", "metrics.0.value"),
        (("onnx_file",), "../evil.onnx", "onnx_file"),
        (("name",), "Bad Name!", "name"),
    ],
)
def test_ill_typed_field_is_named(path: tuple, value: object, named: str) -> None:
    data = _valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CardError, match=f"field '{named}'"):
        ModelCard.from_dict(data, source="x/card.json")


def test_unknown_field_is_refused() -> None:
    data = _valid()
    data["colour"] = "blue"
    with pytest.raises(CardError, match="field 'colour'"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(
    ("task", "mutate", "message"),
    [
        ("upscale", lambda d: d.pop("scale"), "'scale' is required"),
        ("sample", lambda d: d.pop("classes"), "'classes' is required"),
        ("translate", lambda d: d.update(scale=4), "'scale' does not apply"),
        ("sample", lambda d: d.update(classes=["a", "a"]), "distinct"),
        ("translate", lambda d: d.update(headline_metric="psnr"), "no metric named 'psnr'"),
    ],
)
def test_task_rules(task: str, mutate, message: str) -> None:
    data = copy.deepcopy(_valid(task))
    mutate(data)
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data)


def test_not_json_and_not_object(tmp_path: Path) -> None:
    bad = tmp_path / "card.json"
    bad.write_text("{nope")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CardError, match="must be a JSON object"):
        ModelCard.load(bad)
    with pytest.raises(CardError, match="not found"):
        ModelCard.load(tmp_path / "nothing" / "card.json")


def test_sha256_mismatch_and_missing_file_are_detected(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"pretend this is a model")
    data = _valid()
    data["sha256"] = sha256_file(onnx)
    card = ModelCard.from_dict(data)
    assert card.verify_file(tmp_path) == onnx
    onnx.write_bytes(b"pretend this is another model")
    with pytest.raises(CardError, match="does not match"):
        card.verify_file(tmp_path)
    onnx.unlink()
    with pytest.raises(CardError, match="missing"):
        card.verify_file(tmp_path)


def test_class_index_resolves_names_and_indices() -> None:
    card = ModelCard.from_dict(_valid("sample"))
    assert card.class_index("fish") == 1
    assert card.class_index(0) == 0
    assert card.class_index("1") == 1
    with pytest.raises(ValueError, match=r"use one of \['cat', 'fish'\]"):
        card.class_index("dog")
    with pytest.raises(ValueError, match="out of range"):
        card.class_index(2)
    with pytest.raises(ValueError, match="out of range"):
        card.class_index("-1")


def test_committed_schema_is_in_sync() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), (
        "models/card.schema.json is stale: run `python -m models.schema`"
    )


def test_shipped_cards_validate() -> None:
    for path in card_paths():
        card = ModelCard.load(path)
        assert card.name == path.parent.name, f"{path}: card name must equal its folder name"
        card.verify_file(path.parent)


# -- schema 2: typed export records, recipe names, older versions -------------------------------------
def _gate(fp32: float = 70.0, int8: float = 71.0, threshold: float = 0.03, shipped: str = "int8") -> dict:
    return {"metric": "fid", "higher_is_better": False, "fp32": fp32, "int8": int8, "threshold": threshold,
            "speedup": 2.5, "calibration_inputs": 8, "shipped": shipped, "command": "transfigure export r"}  # fmt: skip


def _parity(err: float = 2e-6) -> dict:
    return {"compared": "onnxruntime vs torch", "exporter": "dynamo", "tolerance": 1e-4,
            "cases": [{"batch": 1, "size": [32, 32], "max_abs_err": 1e-6},
                      {"batch": 2, "size": [36, 40], "max_abs_err": err}]}  # fmt: skip


def test_method_is_any_recipe_name() -> None:
    data = _valid()
    data["method"] = "my_recipe2"
    assert ModelCard.from_dict(data).method == "my_recipe2"
    for bad in ("Cycle-GAN", "2gan", ""):
        data["method"] = bad
        with pytest.raises(CardError, match="field 'method'"):
            ModelCard.from_dict(data)


def test_export_records_round_trip_and_follow_their_numbers(tmp_path: Path) -> None:
    data = _valid()
    data.update(precision="int8", parity=_parity(), int8_gate=_gate())
    data["quality_bar"] = QualityBar.of(
        [BarCriterion.judge("FID <= 75", "fid", 70.0, "<=", 75.0)]
    ).model_dump()
    card = ModelCard.from_dict(data)
    card.save(tmp_path)
    again = ModelCard.load(tmp_path)
    assert again == card and again.parity.max_abs_err() == 2e-6 and again.quality_bar.met
    assert again.int8_gate.relative_loss == pytest.approx(1 / 70)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(parity=_parity(err=2e-4)), "exceeds the tolerance"),
        (lambda d: d.update(int8_gate=_gate(int8=80.0)), "ships fp32, not int8"),  # 14 % worse, limit 3 %
        (lambda d: d.update(precision="fp32"), "the gate shipped int8 but the card's precision is fp32"),
        (lambda d: d["quality_bar"].update(met=True), "'met' must be true exactly when"),
        (lambda d: d["quality_bar"]["criteria"][0].update(met=True), "'met' is True but 80.0 <= 75.0"),
    ],
)
def test_export_records_that_contradict_themselves_are_refused(mutate, message: str) -> None:
    data = _valid()
    data.update(precision="int8", parity=_parity(), int8_gate=_gate())
    data["quality_bar"] = QualityBar.of(
        [BarCriterion.judge("FID <= 75", "fid", 80.0, "<=", 75.0)]
    ).model_dump()
    ModelCard.from_dict(copy.deepcopy(data))  # valid as it is
    mutate(data)
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data)


def test_criterion_without_a_figure_is_missed() -> None:
    crit = BarCriterion.judge("PSNR >= 30", "psnr", float("nan"), ">=", 30.0, {"bicubic": float("nan")})
    assert crit.value is None and not crit.met and crit.context == {}
    assert not QualityBar.of([crit, BarCriterion.judge("x", "y", 1.0, ">=", 0.5)]).met


def test_shipped_headline_is_the_int8_files_measurement() -> None:
    data = _valid()
    data.update(precision="int8", int8_gate=_gate(fp32=70.0, int8=71.0))
    metric, measured_in = ModelCard.from_dict(data).shipped_headline()
    assert (metric.name, metric.value, measured_in) == ("fid", 71.0, "int8")
    assert metric.command == "transfigure export r"
    data.update(precision="fp32", int8_gate=_gate(fp32=70.0, int8=80.0, shipped="fp32"))
    assert ModelCard.from_dict(data).shipped_headline()[0].value == 70.0  # fp32 shipped: the evaluation
    del data["int8_gate"]
    data["precision"] = "int8"  # an INT8 file whose gate measured nothing: the fp32 figure, said so
    assert ModelCard.from_dict(data).shipped_headline()[1] == "fp32"


def test_schema_1_card_is_upgraded_on_load(tmp_path: Path) -> None:
    data = _valid()
    people = "Trained on the full split. Quality bar MISSED: judge 30 % < 65 %."
    generated = " ONNX exporter: dynamo (opset 17). Parity vs PyTorch: max abs err 2e-06 <= 1e-04."
    data.update(schema_version=1, notes=people + generated)
    (tmp_path / "card.json").write_text(json.dumps(data))
    card = ModelCard.load(tmp_path)
    # the exporter's generated tail is dropped (export measures it anew, as records); the rest stays
    assert card.schema_version == SCHEMA_VERSION and card.notes == people
    assert card.parity is None and card.int8_gate is None and card.quality_bar is None
    assert json.loads(card.to_json())["schema_version"] == SCHEMA_VERSION


def test_schema_2_card_is_upgraded_with_its_notes_and_no_style(tmp_path: Path) -> None:
    data = _valid()
    data.update(schema_version=2, notes="People's notes. ONNX exporter: kept, it is prose in version 2.")
    card = ModelCard.from_dict(data)
    assert card.schema_version == SCHEMA_VERSION and card.notes == data["notes"] and card.style is None


def test_style_record_names_the_graph_inputs_and_only_fits_sample_models() -> None:
    good = {"inputs": list(STYLE_INPUTS), "layers": 5}
    card = ModelCard.from_dict({**_valid("sample"), "style": good})
    assert card.style is not None and card.style.layers == 5 and card.style.inputs == list(STYLE_INPUTS)
    assert ModelCard.from_dict(json.loads(card.to_json())) == card
    with pytest.raises(CardError, match=r"field 'style.inputs'.*the style graph's inputs"):
        ModelCard.from_dict({**_valid("sample"), "style": {"inputs": ["z", "label"], "layers": 5}})
    with pytest.raises(CardError, match="field 'style' does not apply to task 'translate'"):
        ModelCard.from_dict({**_valid("translate"), "style": good})


@pytest.mark.parametrize("version", [0, 4, "2", True])
def test_unknown_schema_version_is_refused_by_name(tmp_path: Path, version) -> None:
    data = _valid()
    data["schema_version"] = version
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(CardError) as e:
        ModelCard.load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "card.json") in msg and f"schema version {version!r} is not supported" in msg
    assert f"reads version {SCHEMA_VERSION}" in msg


def test_shipped_cards_carry_their_export_records() -> None:
    for path in card_paths():
        card = ModelCard.load(path)
        assert card.schema_version == SCHEMA_VERSION
        assert card.parity is not None and card.quality_bar is not None, path
        if card.precision == "int8":  # every shipped INT8 file went through the gate
            assert card.int8_gate is not None and card.int8_gate.metric == card.headline_metric, path
        assert not any(m.name.startswith("int8_headline") for m in card.metrics), path


# -- portable paths: a card carries no machine's absolute paths ---------------------------------------
def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _absolute_paths(card_json: dict) -> list[str]:
    """Every string of a card that is, or holds as a word, an absolute path."""
    found = []
    for text in _strings(card_json):
        for word in text.split():
            value = word.partition("=")[2] if word.startswith("-") else word
            if re.match(
                r"/[^/\s]+/", value
            ):  # /dir/...: a file system path (not an endpoint like /translate)
                found.append(word)
    return found


def test_shipped_card_files_hold_no_absolute_path() -> None:
    for path in card_paths():
        assert _absolute_paths(json.loads(path.read_text())) == [], path


def test_absolute_paths_of_an_old_card_are_rewritten_on_load(tmp_path: Path) -> None:
    from models.paths import PROJECT_ROOT

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"pretend this is a model")
    digest = sha256_file(onnx)
    data = _valid()
    data["sha256"] = digest
    inside, beside = PROJECT_ROOT / "runs" / "s2w", PROJECT_ROOT.parent / "shared" / "data" / "s2w_yosemite"
    data["training"]["recipe_config"] = {
        "config": {"data": str(beside), "out": str(inside), "init": "/home/someone/runs/sr", "steps": 5},
        "checkpoint": str(inside / "checkpoints" / "last.pt"),
    }
    data["metrics"][0]["command"] = f"transfigure evaluate {inside} --data={beside} --out /mnt/x/eval"
    (tmp_path / "card.json").write_text(json.dumps(data))
    assert len(_absolute_paths(data)) == 7

    card = ModelCard.load(tmp_path)
    rc = card.training.recipe_config
    assert rc["config"] == {
        "data": "../shared/data/s2w_yosemite",
        "out": "runs/s2w",
        "init": "sr",
        "steps": 5,
    }
    assert rc["checkpoint"] == "runs/s2w/checkpoints/last.pt"
    assert card.metrics[0].command == (
        "transfigure evaluate runs/s2w --data=../shared/data/s2w_yosemite --out eval"
    )
    assert _absolute_paths(json.loads(card.to_json())) == []
    # the model file is not touched: same bytes, same sha256, still verified by the card
    assert card.sha256 == digest and sha256_file(onnx) == digest and card.verify_file(tmp_path) == onnx
    # saving writes the portable card, which loads to the same card
    card.save(tmp_path)
    assert (
        ModelCard.load(tmp_path) == card
        and _absolute_paths(json.loads((tmp_path / "card.json").read_text())) == []
    )


def test_relative_paths_and_plain_commands_load_unchanged() -> None:
    data = _valid()
    data["training"]["recipe_config"] = {
        "config": {"data": "../shared/data/x"},
        "checkpoint": "runs/x/last.pt",
    }
    data["metrics"][0]["command"] = "transfigure evaluate models/x --data ../shared/data/x --limit 2"
    card = ModelCard.from_dict(data)
    assert card.training.recipe_config == data["training"]["recipe_config"]
    assert card.metrics[0].command == data["metrics"][0]["command"]
