"""tests/gpu/check.sh without a GPU: its dry run, and every command it plans valid for the real parsers."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "gpu" / "check.sh"
RECIPES = ("cyclegan", "pix2pix", "cgan", "srgan")


def _check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tests" / "gpu" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--work", str(work), "--venv", str(tmp_path / "venv")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nothing is run" in out and "parity tolerance 0.01" in out
    for recipe in RECIPES:
        assert f"[train] {recipe}\n" in out and f"[export] {recipe}\n" in out
    train_lines = [line for line in out.splitlines() if " training.cli train " in line]
    assert len(train_lines) == len(RECIPES) + 1 and all("--device cuda" in line for line in train_lines)
    assert sum("--precision auto" in line for line in train_lines) == len(RECIPES)
    assert sum("--precision fp16" in line for line in train_lines) == 1  # the grad scaler's path
    # a fresh copy: the check makes its own environment, with onnxruntime swapped for onnxruntime-gpu
    assert "pip uninstall -y onnxruntime" in out and "'onnxruntime-gpu>=1.20'" in out
    assert "probe.py parity" in out and "--tolerance 0.01 --device CUDAExecutionProvider" in out
    assert "TRANSFIGURE_PROVIDERS=cuda" in out and "TRANSFIGURE_PROVIDERS=cpu" in out
    assert "report.json" in out
    assert not work.exists() and not (tmp_path / "venv").exists()


def test_an_existing_python_is_used_as_it_is(tmp_path: Path) -> None:
    check = _check_module()
    args = check._args(["--python", sys.executable, "--work", str(tmp_path)])
    steps = check.plan(args)
    assert [s.group for s in steps].count("environment") == 1  # no installs
    assert all(s.argv[0] == sys.executable for s in steps)


def test_every_planned_command_parses_with_the_real_parsers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from service import serve_cli
    from training import export
    from training.recipes import recipe_module

    check = _check_module()
    for device in ("cuda", "cpu"):
        steps = check.plan(
            check._args(["--device", device, "--work", str(tmp_path), "--python", sys.executable])
        )
        trained = set()
        for step in steps:
            argv = [a.replace("{port}", "3000") for a in step.argv]
            parser = argparse.ArgumentParser()
            if step.group == "train":
                assert argv[1:4] == ["-m", "training.cli", "train"]
                recipe_module(argv[4]).add_arguments(parser)
                args = parser.parse_args(argv[5:])
                assert args.device == device and args.steps == 300 and Path(args.data).is_dir()
                trained.add(Path(args.out))
            elif step.group == "export":
                export.add_arguments(parser)
                args = parser.parse_args(argv[4:])
                assert Path(args.run) in trained, "every export reads a run the check trains"
            elif step.group == "serve":
                serve_cli.add_arguments(parser)
                args = parser.parse_args(argv[4:])
                assert args.models_dir == Path(step.env["TRANSFIGURE_MODELS_DIR"])
        serving = [s.env["TRANSFIGURE_PROVIDERS"] for s in steps if s.group == "serve"]
        assert serving == (["cuda", "cpu"] if device == "cuda" else ["cpu"])
        if device == "cpu":
            assert not any("fp16" in shlex.join(s.argv) for s in steps)  # fp16 needs CUDA


def test_the_table_reports_failures_and_measurements() -> None:
    check = _check_module()
    train = check.Step("train", "cgan", ["x"], result={"ok": True, "it_per_s": 42.0, "seconds": 3.0})
    served = check.Step(
        "serve", "BentoML on cuda", ["x"], env={"TRANSFIGURE_PROVIDERS": "cuda"},
        result={"ok": False, "serve": [{"model": "m", "endpoint": "/translate", "status": 500, "ok": False,
                                        "provider": "cuda", "served_file": "model.onnx", "median_ms": 3.25}]},
    )  # fmt: skip
    skipped = check.Step("export", "cgan", ["x"], result={"ok": False, "skipped": "an earlier step failed"})
    text = check.table([train, served, skipped], "cuda")
    assert "42.0 steps/s" in text and "HTTP 500" in text and "3.2 ms" in text
    assert "skipped" in text and "an earlier step failed" in text


def test_make_gpu_check_runs_the_script() -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check", "GPU_CHECK_ARGS=--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "tests/gpu/check.sh --dry-run"
    assert SCRIPT.stat().st_mode & 0o111, "check.sh must be executable"
