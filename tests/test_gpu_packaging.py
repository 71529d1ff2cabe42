"""The GPU Bento and the `serve-gpu` extra: the CPU ones with onnxruntime-gpu in place of onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _names(requirements: list[str]) -> dict[str, str]:
    return {Requirement(r).name: str(Requirement(r).specifier) for r in requirements}


def _swap_runtime(packages: dict[str, str]) -> dict[str, str]:
    out = dict(packages)
    out.pop("onnxruntime")
    return out


def test_serve_gpu_is_serve_with_onnxruntime_gpu() -> None:
    extras = _extras()
    serve, gpu = _names(extras["serve"]), _names(extras["serve-gpu"])
    assert "onnxruntime" not in gpu and "onnxruntime-gpu" in gpu
    assert _swap_runtime(serve) == {k: v for k, v in gpu.items() if k != "onnxruntime-gpu"}
    # every other extra that brings onnxruntime clashes with it: the extra's comment says so
    assert all("onnxruntime-gpu" not in _names(reqs) for name, reqs in extras.items() if name != "serve-gpu")


def test_the_gpu_bento_is_the_cpu_bento_on_cuda() -> None:
    cpu = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    gpu = yaml.safe_load((REPO / "bentofile-gpu.yaml").read_text())
    for key in ("service", "name", "include", "exclude", "envs"):
        assert gpu[key] == cpu[key], f"bentofile-gpu.yaml's {key} differs from bentofile.yaml's"
    assert _names(cpu["python"]["packages"]) == _names(_extras()["serve"])
    assert _names(gpu["python"]["packages"]) == _names(_extras()["serve-gpu"])
    assert gpu["docker"]["cuda_version"] and "cuda_version" not in cpu.get("docker", {})


def test_bentoml_reads_the_gpu_bentofile() -> None:
    """BentoML's own parser accepts the file and resolves its CUDA version (no Docker needed)."""
    build_config = pytest.importorskip("bentoml._internal.bento.build_config")
    with (REPO / "bentofile-gpu.yaml").open() as f:
        config = build_config.BentoBuildConfig.from_yaml(f)
    assert config.docker.cuda_version.startswith("12.")
    assert config.docker.distro == "debian" and config.python.packages[1].startswith("onnxruntime-gpu")


def test_every_service_module_the_service_imports_is_in_both_bentos() -> None:
    include = set(yaml.safe_load((REPO / "bentofile.yaml").read_text())["include"])
    cli_only = {"serve_cli.py", "zoo_cli.py"}  # `transfigure` commands, not the service
    modules = {f"service/{p.name}" for p in (REPO / "service").glob("*.py") if p.name not in cli_only}
    assert modules <= include, f"not in the Bento: {sorted(modules - include)}"
