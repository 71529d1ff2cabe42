"""service.providers: CUDA or CPU for the model sessions, the settings' errors, the GPU file of a card.

No GPU is needed: what onnxruntime offers is set through its public ``get_available_providers``,
and a CUDA plan on the CPU-only onnxruntime exercises the real fallback (onnxruntime opens the
session on the CPU), which an explicit ``cuda`` must refuse.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from models.card import CardError, ModelCard, sha256_file
from service import batch
from service.config import Settings, SettingsError, load_settings, variable
from service.providers import (
    CPU,
    CUDA,
    ProviderError,
    ProviderPlan,
    check_one_runtime,
    installed_runtime_packages,
    parse_providers,
    plan_from_settings,
    resolve_providers,
)
from service.serve_cli import add_arguments
from service.serve_cli import run as serve_run
from service.zoo import Zoo, check_cards, load_model
from tests.tiny_models import make_model

WITH_CUDA = [CUDA, CPU]
WITHOUT_CUDA = ["AzureExecutionProvider", CPU]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(variable(field), raising=False)


def _offer(monkeypatch: pytest.MonkeyPatch, providers: list[str]) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))


# -- the settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", "auto"), ("AUTO", "auto"), (" CUDA , cpu ", "cuda,cpu"), ("cpu", "cpu"), ("cpu,cuda", "cpu,cuda")],
)
def test_providers_setting_is_normalised(monkeypatch: pytest.MonkeyPatch, raw: str, expected: str) -> None:
    monkeypatch.setenv("TRANSFIGURE_PROVIDERS", raw)
    s = load_settings()
    assert s.providers == expected and parse_providers(s.providers) == tuple(expected.split(","))


@pytest.mark.parametrize(("name", "raw"), [
    ("TRANSFIGURE_PROVIDERS", "gpu"), ("TRANSFIGURE_PROVIDERS", "cuda,cuda"), ("TRANSFIGURE_PROVIDERS", "auto,cpu"),
    ("TRANSFIGURE_GPU_MEM_LIMIT", "-1"), ("TRANSFIGURE_GPU_MEM_LIMIT", "4GiB"),
])  # fmt: skip
def test_bad_provider_settings_are_named(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=f"environment variable {name}={raw!r}: "):
        load_settings()


def test_gpu_mem_limit_default_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().gpu_mem_limit == 4 << 30
    monkeypatch.setenv("TRANSFIGURE_GPU_MEM_LIMIT", "2e9")
    assert load_settings().gpu_mem_limit == 2_000_000_000
    monkeypatch.setenv("TRANSFIGURE_GPU_MEM_LIMIT", "0")
    assert load_settings().gpu_mem_limit == 0  # no limit


# -- choosing the providers ----------------------------------------------------------------------


def test_auto_runs_on_cuda_when_onnxruntime_offers_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _offer(monkeypatch, WITH_CUDA)
    with caplog.at_level(logging.INFO, logger="transfigure.providers"):
        plan = resolve_providers(("auto",), gpu_mem_limit=1 << 30, packages=["onnxruntime-gpu"])
    assert plan.providers == (CUDA, CPU) and plan.uses_cuda and not plan.explicit
    (record,) = caplog.records
    assert "TRANSFIGURE_PROVIDERS=auto" in record.getMessage() and "CUDA" in record.getMessage()


def test_auto_without_cuda_runs_on_the_cpu_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _offer(monkeypatch, WITHOUT_CUDA)
    with caplog.at_level(logging.INFO, logger="transfigure.providers"):
        plan = plan_from_settings(load_settings())
    assert plan.providers == (CPU,) and not plan.uses_cuda
    (record,) = caplog.records
    assert "models run on the CPU" in record.getMessage() and "serve-gpu" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transfigure.providers"):
        plan_from_settings(load_settings(), announce=False)  # a service worker: the same choice, silently
    assert not caplog.records


def test_explicit_cuda_without_cuda_refuses_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    _offer(monkeypatch, WITHOUT_CUDA)
    monkeypatch.setenv("TRANSFIGURE_PROVIDERS", "cuda,cpu")
    with pytest.raises(ProviderError, match="TRANSFIGURE_PROVIDERS='cuda,cpu'") as e:
        plan_from_settings(load_settings())
    assert CUDA in str(e.value) and "serve-gpu" in str(e.value) and isinstance(e.value, SettingsError)


def test_explicit_lists_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _offer(monkeypatch, WITH_CUDA)
    assert resolve_providers(("cuda", "cpu"), packages=["onnxruntime-gpu"]).providers == (CUDA, CPU)
    assert resolve_providers(("cpu",), packages=["onnxruntime-gpu"]).providers == (CPU,)
    assert resolve_providers(("cpu", "cuda"), packages=["onnxruntime-gpu"]).providers == (CPU, CUDA)


def test_the_cuda_provider_gets_the_arena_limit() -> None:
    plan = ProviderPlan((CUDA, CPU), explicit=True, gpu_mem_limit=3 << 30)
    (cuda, options), cpu = plan.session_providers()
    assert (cuda, cpu) == (CUDA, CPU)
    assert options["gpu_mem_limit"] == str(3 << 30) and options["arena_extend_strategy"] == "kSameAsRequested"
    (_, unlimited), _ = ProviderPlan((CUDA, CPU), gpu_mem_limit=0).session_providers()
    assert "gpu_mem_limit" not in unlimited
    assert ProviderPlan().session_providers() == [CPU]


def test_both_onnxruntime_packages_installed_are_refused() -> None:
    with pytest.raises(ProviderError, match="both onnxruntime and onnxruntime-gpu are installed") as e:
        resolve_providers(("auto",), packages=["onnxruntime", "onnxruntime-gpu"])
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(e.value)
    check_one_runtime(["onnxruntime-gpu"])
    assert installed_runtime_packages() == ["onnxruntime"]  # this environment: the CPU package alone


# -- sessions and the zoo ------------------------------------------------------------------------


def _with_gpu_file(folder: Path) -> Path:
    """Give a tiny model's card a ``gpu_file`` (a copy of its file: what matters here is which opens)."""
    gpu = folder / "model_fp32.onnx"
    shutil.copyfile(folder / "model.onnx", gpu)
    data = json.loads((folder / "card.json").read_text())
    data["gpu_file"] = {"file": gpu.name, "sha256": sha256_file(gpu), "precision": "fp32"}
    (folder / "card.json").write_text(json.dumps(data))
    return gpu


def test_cpu_sessions_say_so_and_run_the_cards_file(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "translate")
    _with_gpu_file(folder)
    model = load_model(folder / "card.json", threads=2, narrow=True)
    assert model.provider == "cpu" and model.path.name == "model.onnx"
    assert model.session.get_providers() == [CPU] and model.narrow_session is not None


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_cuda_plan_runs_the_gpu_file_and_an_explicit_one_refuses_the_cpu_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime without CUDA opens a session asked for CUDA on the CPU: auto says so and carries on,
    an explicit ``cuda`` stops."""
    folder = make_model(tmp_path, "translate")
    _with_gpu_file(folder)
    with caplog.at_level(logging.WARNING, logger="transfigure.providers"):
        model = load_model(folder / "card.json", threads=2, narrow=True, providers=ProviderPlan((CUDA, CPU)))
    assert model.path.name == "model_fp32.onnx" and model.provider == "cpu"
    assert model.narrow_session is None  # one session per model on CUDA
    assert any("could not open it" in r.getMessage() for r in caplog.records)
    with pytest.raises(ProviderError, match="TRANSFIGURE_PROVIDERS names cuda"):
        load_model(folder / "card.json", providers=ProviderPlan((CUDA, CPU), explicit=True))
    zoo = Zoo.load(tmp_path, providers=ProviderPlan((CUDA, CPU)))
    assert zoo.get("tiny-translate").provider == "cpu"


def test_a_bad_gpu_file_is_refused_by_name(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "upscale")
    gpu = _with_gpu_file(folder)
    assert ModelCard.load(folder).verify_gpu_file(folder) == gpu
    gpu.write_bytes(b"swapped")
    with pytest.raises(CardError, match=r"model_fp32.onnx: sha256 .*\(gpu_file.sha256"):
        check_cards(tmp_path, strict=True)
    gpu.unlink()
    with pytest.raises(CardError, match="the GPU file named by the card .* is missing"):
        check_cards(tmp_path, strict=True)
    data = json.loads((folder / "card.json").read_text())
    data["gpu_file"]["file"] = "../elsewhere.onnx"
    with pytest.raises(CardError, match="gpu_file"):
        ModelCard.from_dict(data)


# -- the commands refuse before they start ------------------------------------------------------------


def test_serve_and_batch_refuse_an_explicit_cuda_without_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(tmp_path, "translate")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert serve_run(parser.parse_args(["--models-dir", str(tmp_path), "--check"])) == 0
    assert f"onnxruntime providers: {CPU} (auto)" in capsys.readouterr().out
    monkeypatch.setenv("TRANSFIGURE_PROVIDERS", "cuda")
    assert serve_run(parser.parse_args(["--models-dir", str(tmp_path), "--check"])) == 2
    assert "TRANSFIGURE_PROVIDERS='cuda'" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    args = ["--models-dir", str(tmp_path), "--no-progress", "--model", "tiny-translate"]
    args += ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert batch.main(args) == batch.EXIT_USAGE
    assert "TRANSFIGURE_PROVIDERS='cuda'" in capsys.readouterr().err
