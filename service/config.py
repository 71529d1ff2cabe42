"""The environment the service and ``transfigure batch`` read, as one typed settings object.

Every ``TRANSFIGURE_*`` variable (and Kubernetes' ``JOB_COMPLETION_INDEX``) is a field of
:class:`Settings`, with its default and its meaning as the field's description; the
configuration page of the docs (``docs/reference/configuration.md``) is that list
(``python -m service.config`` prints it; ``make docs-gen`` writes it, tests/test_config.py checks it). A Kubernetes ConfigMap sets most of them.

* :func:`get_settings` reads the environment once and keeps the result (the service reads it at
  import); ``get_settings.cache_clear()`` makes the next call read it again.
* :func:`load_settings` reads it afresh every time (a ``transfigure batch`` run, tests that set
  variables with ``monkeypatch.setenv``).

Unset or empty (blank) variables mean the default. An invalid value raises :class:`SettingsError`,
whose message names every bad variable and its value: the service stops at start-up and
``transfigure batch`` / ``transfigure serve`` exit with a usage error; no request ever sees it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import ZOO_DIR
from service.imaging import Limits

ENV_PREFIX = "TRANSFIGURE_"
AUTO = "auto"
PROVIDER_WORDS = (
    "cuda",
    "cpu",
)  # TRANSFIGURE_PROVIDERS' words (service.providers maps them to onnxruntime's)
_VERBATIM = {"api_token", "models_dir"}  # taken as written: not stripped of spaces
_DEFAULTS = Limits()
# Measured on one worker on one core (docs/RELIABILITY.md, "Overload"): at 500 ms (~5x the unloaded
# p99 of a 256-px /translate) the worker refused requests while its lane stood idle, since under
# overload the time before admission (the event loop parsing ~100 requests a second) alone reaches
# 500 ms, and goodput fell to 27-76 % of capacity; at 2,000 ms it keeps 74-95 % with the slowest
# admitted request at 2.4 s (without the bound: 6.8 s in the same 8 s phases, 16 s in 10 s ones).
DEFAULT_MAX_QUEUE_MS = 2000


class SettingsError(ValueError):
    """An environment variable with an invalid value; the message names each one."""


def _number(value: Any) -> Any:
    """Integers may be written as numbers (``2e7``, ``1024.0``); the fraction is dropped."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite integer")
        return int(number)
    return value


def _side(value: Any) -> Any:
    """A side limit: ``0``, a negative number, ``off`` or ``none`` turn it off."""
    if isinstance(value, str) and value.lower() in {"off", "none"}:
        return None
    return _number(value)


def normalise_providers(value: str) -> str:
    """``auto``, or the provider words in order, lower case: ``" CUDA, cpu "`` -> ``"cuda,cpu"``."""
    words = [w.strip().lower() for w in str(value).split(",") if w.strip()]
    if not words or words == [AUTO]:
        return AUTO
    if any(w not in PROVIDER_WORDS for w in words) or len(set(words)) != len(words):
        raise ValueError(
            f"must be `{AUTO}` or a comma-separated list of {' and '.join(PROVIDER_WORDS)} without repeats, "
            "e.g. `cuda,cpu` or `cpu`"
        )
    return ",".join(words)


Number = Annotated[int, BeforeValidator(_number)]
Limit = Annotated[int, BeforeValidator(_number), Field(ge=0)]  # 0: the default; negative: refused
Side = Annotated[int | None, BeforeValidator(_side)]


class Settings(BaseSettings):
    """Every setting, named after its variable: field ``max_bytes`` is ``TRANSFIGURE_MAX_BYTES``.

    ``doc_default`` (in a field's extra) is how the configuration page states a default that is not a plain
    number: where it depends on other settings or on the machine. Values are normalised as read
    (e.g. ``TRANSFIGURE_THREADS=0`` is ``None``, the automatic choice); :attr:`limits` gathers
    the image limits for ``service.imaging``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore")

    models_dir: Path = Field(
        default=ZOO_DIR,
        description="the zoo folder (`<name>/model.onnx` + `card.json`)",
        json_schema_extra={"doc_default": "shipped `models/`"},
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="comma-separated model names to load (others are ignored)",
        json_schema_extra={"doc_default": "all"},
    )
    strict: bool = Field(
        default=True,
        description="`1`: refuse to start if any model's card/file/sha256 is bad (the message names the file); "
        "`0`: start without it and list it under `unavailable` in `/models`",
    )
    unpinned_bentoml: bool = Field(
        default=False,
        description="`1`: apply the service's BentoML patches on a BentoML other than the pinned version "
        "(with a warning) instead of refusing to start",
    )
    workers: int = Field(default=1, ge=1, description="BentoML worker processes (each loads every model)")
    providers: str = Field(
        default=AUTO,
        description="onnxruntime execution providers of the model sessions: `auto` = CUDA when onnxruntime "
        "offers `CUDAExecutionProvider` (the `serve-gpu` extra on an NVIDIA GPU), else the CPU (logged at "
        "start-up); or a list in order of preference, `cuda,cpu` or `cpu`; a list naming `cuda` refuses to "
        "start where CUDA is not available. `/models` says where each model runs",
    )
    gpu_mem_limit: Limit = Field(
        default=4 << 30,
        description="on CUDA: device memory arena limit in bytes of each model's session, per worker (`0` = "
        "no limit); inputs are admitted by the same pixel limits as on the CPU",
        json_schema_extra={"doc_default": "`4294967296` (4 GiB)"},
    )
    threads: int | None = Field(
        default=None,
        ge=0,
        description="onnxruntime intra-op threads per session (CPUs are cgroup-aware); `transfigure batch`: "
        "its `--threads` default",
        json_schema_extra={"doc_default": "CPUs / workers"},
    )
    infer_concurrency: int = Field(
        default=0,
        ge=0,
        description="inferences running at once per worker: a request alone runs on every ORT thread, queued "
        "requests run side by side on one thread each (more requests/s under load); `1` = strictly one at a time",
        json_schema_extra={"doc_default": "threads; `1` on CUDA"},
    )
    timeout: int = Field(
        default=60, ge=1, description="request timeout in seconds (BentoML `traffic.timeout`)"
    )
    max_concurrency: int = Field(
        default=64,
        ge=1,
        description="requests in flight per service before 429 with `Retry-After` (BentoML `traffic.max_concurrency`)",
    )
    max_queue_ms: int = Field(
        default=DEFAULT_MAX_QUEUE_MS,
        ge=1,
        description="how long a request may wait for an inference lane, counted from its arrival: a request "
        "expected to wait longer (from each model's recent inference time per image size and the requests "
        "ahead of it) gets 503 with `Retry-After` (the expected drain time) at once, and one still waiting "
        "when the time is up gets the same instead of running late; `MAX_CONCURRENCY` stays the outer bound",
    )
    max_body_bytes: int = Field(
        default=0,
        ge=0,
        description="request body limit; larger bodies get 413 before they are read",
        json_schema_extra={"doc_default": "`MAX_BYTES + 1 MiB`"},
    )
    max_bytes: Limit = Field(
        default=_DEFAULTS.max_bytes,
        description="encoded image upload limit (413)",
        json_schema_extra={"doc_default": "`20971520` (20 MiB)"},
    )
    max_pixels: Limit = Field(
        default=_DEFAULTS.max_pixels,
        description="decoded pixel limit per image, checked from the header before decoding (decompression "
        "bombs); 413 above it",
    )
    max_pixels_in_flight: int = Field(
        default=0,
        ge=0,
        description="pixels of the `/translate` and `/upscale` inputs a worker works on at once (decode to "
        "encode); a request that would pass it while others run gets 503 with `Retry-After` (a request alone "
        "is always admitted), so a worker's memory stays that of about one largest image however many arrive",
        json_schema_extra={"doc_default": "`MAX_PIXELS`"},
    )
    max_side: Side = Field(
        default=_DEFAULTS.max_side,
        description="`/translate`: downscale so the longer side is at most this; by default images are "
        "translated at their own resolution",
        json_schema_extra={"doc_default": "`0` (never)"},
    )
    fullres_max_side: Side = Field(
        default=_DEFAULTS.fullres_max_side,
        description="`/translate` and `transfigure batch`, only for models whose network runs at full "
        "resolution (card `input.multiple_of` > 1): the network runs on a copy whose longer side is at most "
        "this and the output is resized back to the input's size, with an `X-Transfigure-Processed-Size: WxH` "
        "header (batch: `processed_size` in the report); `0` = off. Resolution-free translators "
        "(`multiple_of` 1) are never resized by it",
    )
    min_side: Number = Field(
        default=_DEFAULTS.min_side, description="images with a side shorter than this are refused"
    )
    max_aspect: float = Field(
        default=_DEFAULTS.max_aspect, ge=1.0, description="longer/shorter side above this is refused"
    )
    max_upscale_pixels: Limit = Field(
        default=_DEFAULTS.max_upscale_pixels,
        description="`/upscale` input pixel limit (the output is scale² larger)",
    )
    tile: Number = Field(
        default=_DEFAULTS.tile, description="`/upscale` tile side in input pixels (`0` = no tiling)"
    )
    tile_overlap: Number = Field(
        default=_DEFAULTS.tile_overlap, description="context each tile sees beyond its edges"
    )
    max_samples: int = Field(default=64, ge=1, description="`/sample`: largest `n`")
    sample_batching: bool = Field(
        default=True,
        description="`/sample`: batch concurrent requests through BentoML's adaptive batcher; `0`: run each "
        "directly (side by side in the inference lanes) — on CPU with the small cGAN this doubled requests/s "
        "at 16 concurrent requests (62 → 115 req/s), as the batcher's internal JSON hop costs more than "
        "batching saves",
    )
    sample_max_batch: int = Field(
        default=256, ge=2, description="adaptive batching: most samples run together"
    )
    sample_max_latency_ms: int = Field(
        default=10_000,
        ge=10,
        description="adaptive batching: a queued sample request older than this gets 503",
    )
    api_token: str | None = Field(
        default=None,
        repr=False,
        description="if set, every request needs `Authorization: Bearer <token>`, except `/livez`, "
        "`/readyz`, `/metrics`",
        json_schema_extra={"doc_default": "unset"},
    )
    shard_count: int = Field(
        default=1,
        ge=1,
        description="`transfigure batch`: number of shards when `--shard-count` is not given",
    )
    job_completion_index: int | None = Field(
        default=None,
        ge=0,
        validation_alias="JOB_COMPLETION_INDEX",
        description="`transfigure batch`: this shard when `--shard-index` is not given (Kubernetes sets it in "
        "an Indexed Job)",
        json_schema_extra={"doc_default": "`0`"},
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """Surrounding spaces are ignored and a blank value means the default, as for an empty one."""
        if not isinstance(data, dict):
            return data
        out = {}
        for key, value in data.items():
            if isinstance(value, str) and key not in _VERBATIM:
                value = value.strip()
                if not value:
                    continue
            out[key] = value
        return out

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()] or None
        return value or None

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, value: Any) -> Any:
        return normalise_providers(value) if isinstance(value, str) else value

    @field_validator("models_dir")
    @classmethod
    def _resolve_dir(cls, value: Path) -> Path:
        return value.resolve()

    @model_validator(mode="after")
    def _normalise(self) -> Settings:
        """The shorthand values (0: default, off, or derived) become the values the code uses."""
        d = _DEFAULTS
        self.threads = self.threads or None
        self.max_bytes = self.max_bytes or d.max_bytes
        self.max_pixels = self.max_pixels or d.max_pixels
        self.max_upscale_pixels = self.max_upscale_pixels or d.max_upscale_pixels
        self.max_side = self.max_side if self.max_side and self.max_side > 0 else None
        self.fullres_max_side = (
            self.fullres_max_side if self.fullres_max_side and self.fullres_max_side > 0 else None
        )
        self.min_side = max(1, self.min_side)
        self.tile = max(0, self.tile)
        self.tile_overlap = max(0, self.tile_overlap)
        if not self.max_body_bytes:
            self.max_body_bytes = self.max_bytes + (1 << 20)  # multipart framing + form fields
        if not self.max_pixels_in_flight:
            self.max_pixels_in_flight = self.max_pixels
        return self

    @property
    def limits(self) -> Limits:
        """What an input image may be (``service.imaging``)."""
        return Limits(
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            max_side=self.max_side,
            fullres_max_side=self.fullres_max_side,
            min_side=self.min_side,
            max_aspect=self.max_aspect,
            max_upscale_pixels=self.max_upscale_pixels,
            tile=self.tile,
            tile_overlap=self.tile_overlap,
        )


def variable(field: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    info = Settings.model_fields[field]
    return info.validation_alias if isinstance(info.validation_alias, str) else ENV_PREFIX + field.upper()


def _describe(e: ValidationError) -> str:
    names = {variable(f): f for f in Settings.model_fields}
    problems = []
    for err in e.errors():
        loc = str(err["loc"][0]) if err["loc"] else ""
        name = loc if loc in names else variable(loc) if loc in Settings.model_fields else loc
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"environment variable {name}={err['input']!r}: {msg[:1].lower()}{msg[1:]}")
    return "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment now; ``overrides`` (by field name) win over it. Raises :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(_describe(e)) from None


@functools.cache
def get_settings() -> Settings:
    """The settings, read from the environment on the first call; ``get_settings.cache_clear()`` re-reads."""
    return load_settings()


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "doc_default" in extra:
        return str(extra["doc_default"])
    default = info.default
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def markdown_rows() -> list[str]:
    """The configuration page's table, one ``| variable | default | meaning |`` row per setting."""
    return [
        f"| `{variable(f)}` | {_default_text(f)} | {info.description} |"
        for f, info in Settings.model_fields.items()
    ]


if __name__ == "__main__":
    print("| variable | default | meaning |\n|---|---|---|")
    print("\n".join(markdown_rows()))
