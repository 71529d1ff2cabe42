"""service.config: every variable read with its default, invalid values named, the documented table current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import (
    DEFAULT_MAX_QUEUE_MS,
    Settings,
    SettingsError,
    get_settings,
    load_settings,
    markdown_rows,
    variable,
)
from service.imaging import Limits

REPO = Path(__file__).resolve().parent.parent
VARIABLES = {variable(f): f for f in Settings.model_fields}
# TRANSFIGURE_* names the repository mentions that are not settings of the software
NOT_SETTINGS = {
    "TRANSFIGURE_LONG_TESTS",  # the test suite's switch for its long variants (tests/server_utils.py)
    "TRANSFIGURE_API_TOKEN_FILE",  # k8s/checkov-skips.yaml: a variable the service does not have
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = load_settings()
    assert s.limits == Limits()
    assert s.models_dir == REPO / "models" and s.models is None and s.strict is True
    assert (s.workers, s.threads, s.infer_concurrency, s.timeout, s.max_concurrency) == (1, None, 0, 60, 64)
    assert (
        s.max_body_bytes == Limits().max_bytes + (1 << 20) and s.max_pixels_in_flight == Limits().max_pixels
    )
    assert (s.max_samples, s.sample_batching, s.sample_max_batch, s.sample_max_latency_ms) == (
        64,
        True,
        256,
        10_000,
    )
    assert s.api_token is None and s.shard_count == 1 and s.job_completion_index is None
    assert s.max_queue_ms == DEFAULT_MAX_QUEUE_MS == 2000


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("TRANSFIGURE_MODELS_DIR", "/srv/zoo", Path("/srv/zoo")),
        ("TRANSFIGURE_MODELS", " a, ,b ", ["a", "b"]),
        ("TRANSFIGURE_MODELS", " , ", None),
        ("TRANSFIGURE_STRICT", "off", False),
        ("TRANSFIGURE_STRICT", "TRUE", True),
        ("TRANSFIGURE_WORKERS", "4", 4),
        ("TRANSFIGURE_PROVIDERS", " CUDA, cpu ", "cuda,cpu"),
        ("TRANSFIGURE_PROVIDERS", "Auto", "auto"),
        ("TRANSFIGURE_GPU_MEM_LIMIT", "2e9", 2_000_000_000),
        ("TRANSFIGURE_GPU_MEM_LIMIT", "0", 0),  # 0: no limit
        ("TRANSFIGURE_THREADS", "3", 3),
        ("TRANSFIGURE_THREADS", "0", None),  # 0: the automatic choice
        ("TRANSFIGURE_INFER_CONCURRENCY", "1", 1),
        ("TRANSFIGURE_TIMEOUT", " 30 ", 30),
        ("TRANSFIGURE_MAX_CONCURRENCY", "8", 8),
        ("TRANSFIGURE_MAX_BODY_BYTES", "1000", 1000),
        ("TRANSFIGURE_MAX_BYTES", "2e6", 2_000_000),  # numbers as numbers
        ("TRANSFIGURE_MAX_BYTES", "0", Limits().max_bytes),  # 0: the default
        ("TRANSFIGURE_MAX_PIXELS", "1000", 1000),
        ("TRANSFIGURE_MAX_PIXELS_IN_FLIGHT", "13000000", 13_000_000),
        ("TRANSFIGURE_MAX_SIDE", "1024", 1024),
        ("TRANSFIGURE_MAX_SIDE", "off", None),
        ("TRANSFIGURE_MAX_SIDE", "-1", None),
        ("TRANSFIGURE_FULLRES_MAX_SIDE", "512", 512),
        ("TRANSFIGURE_FULLRES_MAX_SIDE", "0", None),
        ("TRANSFIGURE_MIN_SIDE", "0", 1),
        ("TRANSFIGURE_MAX_ASPECT", "4.5", 4.5),
        ("TRANSFIGURE_MAX_UPSCALE_PIXELS", "100", 100),
        ("TRANSFIGURE_TILE", "0", 0),
        ("TRANSFIGURE_TILE", "-5", 0),
        ("TRANSFIGURE_TILE_OVERLAP", "4", 4),
        ("TRANSFIGURE_MAX_SAMPLES", "9", 9),
        ("TRANSFIGURE_SAMPLE_BATCHING", "0", False),
        ("TRANSFIGURE_SAMPLE_MAX_BATCH", "32", 32),
        ("TRANSFIGURE_SAMPLE_MAX_LATENCY_MS", "2000", 2000),
        ("TRANSFIGURE_API_TOKEN", " s3cret ", " s3cret "),  # taken as written
        ("TRANSFIGURE_SHARD_COUNT", "4", 4),
        ("JOB_COMPLETION_INDEX", "3", 3),
    ],
)
def test_each_variable_is_read(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, expected: object
) -> None:
    monkeypatch.setenv(name, raw)
    assert getattr(load_settings(), VARIABLES[name]) == expected


def test_empty_or_blank_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    default = load_settings()
    for name in VARIABLES:
        monkeypatch.setenv(name, "")
    assert load_settings() == default
    monkeypatch.setenv("TRANSFIGURE_TIMEOUT", "   ")
    monkeypatch.setenv("TRANSFIGURE_STRICT", " ")
    assert load_settings().timeout == 60 and load_settings().strict is True


def test_derived_limits_follow_what_they_derive_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFIGURE_MAX_BYTES", "1000")
    monkeypatch.setenv("TRANSFIGURE_MAX_PIXELS", "500")
    s = load_settings()
    assert s.max_body_bytes == 1000 + (1 << 20) and s.max_pixels_in_flight == 500
    assert s.limits.max_bytes == 1000 and s.limits.max_pixels == 500


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TRANSFIGURE_STRICT", "maybe"),
        ("TRANSFIGURE_WORKERS", "0"),
        ("TRANSFIGURE_WORKERS", "two"),
        ("TRANSFIGURE_PROVIDERS", "tpu"),
        ("TRANSFIGURE_GPU_MEM_LIMIT", "-1"),
        ("TRANSFIGURE_THREADS", "-1"),
        ("TRANSFIGURE_TIMEOUT", "1.5"),
        ("TRANSFIGURE_MAX_BYTES", "lots"),
        ("TRANSFIGURE_MAX_PIXELS", "inf"),
        ("TRANSFIGURE_FULLRES_MAX_SIDE", "big"),
        ("TRANSFIGURE_MAX_ASPECT", "wide"),
        ("TRANSFIGURE_MAX_ASPECT", "0.5"),  # below 1 every image would be refused
        ("TRANSFIGURE_MAX_BYTES", "-5"),
        ("TRANSFIGURE_MAX_PIXELS", "-3"),
        ("TRANSFIGURE_MAX_UPSCALE_PIXELS", "-1"),
        ("TRANSFIGURE_SAMPLE_MAX_BATCH", "1"),
        ("TRANSFIGURE_SAMPLE_MAX_LATENCY_MS", "5"),
        ("TRANSFIGURE_SHARD_COUNT", "0"),
        ("JOB_COMPLETION_INDEX", "-1"),
    ],
)
def test_an_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=re.escape(f"environment variable {name}={raw!r}: ")):
        load_settings()


def test_every_invalid_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFIGURE_TILE", "big")
    monkeypatch.setenv("TRANSFIGURE_WORKERS", "0")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "TRANSFIGURE_TILE='big'" in str(e.value) and "TRANSFIGURE_WORKERS='0'" in str(e.value)


def test_the_token_stays_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFIGURE_API_TOKEN", "s3cret")
    s = load_settings()
    assert s.api_token == "s3cret" and "s3cret" not in repr(s)


def test_get_settings_is_read_once_until_the_cache_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("TRANSFIGURE_TIMEOUT", "30")
        first = get_settings()
        monkeypatch.setenv("TRANSFIGURE_TIMEOUT", "45")
        assert get_settings() is first and first.timeout == 30
        get_settings.cache_clear()
        assert get_settings().timeout == 45
    finally:
        get_settings.cache_clear()


CONFIG_PAGE = REPO / "docs" / "reference" / "configuration.md"


def _documented_rows() -> list[str]:
    return [line for line in CONFIG_PAGE.read_text().splitlines() if line.startswith("| `")]


def test_the_documented_table_is_the_settings() -> None:
    """docs/reference/configuration.md is generated from Settings: run `make docs-gen` when this fails."""
    rows, expected = _documented_rows(), markdown_rows()
    documented = [re.match(r"\| `(\w+)`", r).group(1) for r in rows]  # type: ignore[union-attr]
    assert sorted(documented) == sorted(VARIABLES), "documented rows and settings differ: run `make docs-gen`"
    for want in expected:
        name = want.split("`")[1]
        assert want in rows, f"the row for {name} is stale (run `make docs-gen`); it should read:\n{want}"
    assert rows == expected, "documented rows are out of order: run `make docs-gen`"


def test_stated_defaults_are_the_real_ones() -> None:
    """Where a default is a number, the documented default column starts with it."""
    for row in markdown_rows():
        name, default_text = re.match(r"\| `(\w+)` \| (.*?) \|", row).groups()  # type: ignore[union-attr]
        default = Settings.model_fields[VARIABLES[name]].default
        if isinstance(default, bool):
            assert default_text == f"`{int(default)}`", name
        elif isinstance(default, int | float) and default:
            number = int(default) if float(default).is_integer() else default
            assert default_text.startswith(f"`{number}`"), name


def test_every_variable_the_repository_mentions_exists() -> None:
    """Docs, manifests, messages and tests name only variables the software reads."""
    mentioned: dict[str, set[str]] = {}
    for pattern in ("service/**/*.py", "training/**/*.py", "models/**/*.py", "tests/**/*.py", "k8s/**/*",
                    "docs/**/*.md", "*.md", "bentofile.yaml", "Makefile"):  # fmt: skip
        for path in REPO.glob(pattern):
            if path.is_file():
                for name in re.findall(
                    r"\bTRANSFIGURE_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")
                ):
                    mentioned.setdefault(name, set()).add(str(path.relative_to(REPO)))
    unknown = {
        n: sorted(where) for n, where in mentioned.items() if n not in VARIABLES and n not in NOT_SETTINGS
    }
    assert not unknown, f"not a setting: {unknown}"
