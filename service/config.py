"""The service's configuration, read once from the environment (a Kubernetes ConfigMap sets these).

| variable | default | meaning |
|---|---|---|
| `TRANSFIGURE_MODELS_DIR` | shipped `models/` | the zoo folder (`<name>/model.onnx` + `card.json`) |
| `TRANSFIGURE_MODELS` | all | comma-separated model names to load (others are ignored) |
| `TRANSFIGURE_STRICT` | `1` | `1`: refuse to start if any model's card/file/sha256 is bad (the message names the file); `0`: start without it and list it under `unavailable` in `/models` |
| `TRANSFIGURE_WORKERS` | `1` | BentoML worker processes (each loads every model) |
| `TRANSFIGURE_THREADS` | CPUs / workers | onnxruntime intra-op threads per session (CPUs are cgroup-aware) |
| `TRANSFIGURE_INFER_CONCURRENCY` | threads | inferences running at once per worker: a request alone runs on every ORT thread, queued requests run side by side on one thread each (more requests/s under load); `1` = strictly one at a time |
| `TRANSFIGURE_TIMEOUT` | `60` | request timeout in seconds (BentoML `traffic.timeout`) |
| `TRANSFIGURE_MAX_CONCURRENCY` | `64` | requests in flight per service before 503 (BentoML `traffic.max_concurrency`) |
| `TRANSFIGURE_MAX_BODY_BYTES` | `MAX_BYTES + 1 MiB` | request body limit; larger bodies get 413 before they are read |
| `TRANSFIGURE_MAX_BYTES` | `20971520` (20 MiB) | encoded image upload limit (413) |
| `TRANSFIGURE_MAX_PIXELS` | `40000000` | decoded pixel limit per image, checked from the header before decoding (decompression bombs); 413 above it |
| `TRANSFIGURE_MAX_PIXELS_IN_FLIGHT` | `MAX_PIXELS` | pixels of the `/translate` and `/upscale` inputs a worker works on at once (decode to encode); a request that would pass it while others run gets 503 with Retry-After (a request alone is always admitted), so memory stays that of about one largest image (`service/admission.py`) |
| `TRANSFIGURE_MAX_SIDE` | `0` (never) | `/translate`: downscale so the longer side is at most this; by default images are translated at their own resolution |
| `TRANSFIGURE_FULLRES_MAX_SIDE` | `1024` | `/translate` and `transfigure batch`, only for models whose network runs at full resolution (card `input.multiple_of` > 1): the network runs on a copy whose longer side is at most this and the output is resized back to the input's size, with an `X-Transfigure-Processed-Size: WxH` header; `0` = off. Resolution-free translators (`multiple_of` 1) are never resized by it |
| `TRANSFIGURE_MIN_SIDE` | `1` | images with a side shorter than this are refused |
| `TRANSFIGURE_MAX_ASPECT` | `32` | longer/shorter side above this is refused |
| `TRANSFIGURE_MAX_UPSCALE_PIXELS` | `4000000` | `/upscale` input pixel limit (the output is scale² larger) |
| `TRANSFIGURE_TILE` | `256` | `/upscale` tile side in input pixels (`0` = no tiling) |
| `TRANSFIGURE_TILE_OVERLAP` | `16` | context each tile sees beyond its edges |
| `TRANSFIGURE_MAX_SAMPLES` | `64` | `/sample`: largest `n` |
| `TRANSFIGURE_SAMPLE_BATCHING` | `1` | `/sample`: batch concurrent requests through BentoML's adaptive batcher; `0`: run each directly (side by side in the inference lanes) — on CPU with the small cGAN this doubled requests/s at 16 concurrent requests, as the batcher's internal JSON hop costs more than batching saves |
| `TRANSFIGURE_SAMPLE_MAX_BATCH` | `256` | adaptive batching: most samples run together |
| `TRANSFIGURE_SAMPLE_MAX_LATENCY_MS` | `10000` | adaptive batching: a queued sample request older than this gets 503 |
| `TRANSFIGURE_API_TOKEN` | unset | if set, every request needs `Authorization: Bearer <token>`, except `/livez`, `/readyz`, `/metrics` |

Invalid values stop the service at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from models import zoo_dir
from service.imaging import Limits


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be at least {minimum}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"environment variable {name}={raw!r} must be 1/0 (true/false)")


@dataclass
class ServiceConfig:
    models_dir: Path = field(default_factory=zoo_dir)
    models: list[str] | None = None  # None: every model in the zoo
    strict: bool = True
    workers: int = 1
    threads: int | None = None  # None: CPUs // workers
    infer_concurrency: int = 0  # 0: the ORT threads per worker (service.zoo.InferenceSlots)
    timeout_s: int = 60
    max_concurrency: int = 64
    max_body_bytes: int = 0  # 0: limits.max_bytes + 1 MiB
    max_pixels_in_flight: int = 0  # 0: limits.max_pixels (service.admission.PixelBudget)
    max_samples: int = 64
    sample_batching: bool = True
    sample_max_batch: int = 256
    sample_max_latency_ms: int = 10_000
    api_token: str | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.max_body_bytes:
            self.max_body_bytes = self.limits.max_bytes + (1 << 20)  # multipart framing + form fields
        if not self.max_pixels_in_flight:
            self.max_pixels_in_flight = self.limits.max_pixels

    @classmethod
    def from_env(cls) -> ServiceConfig:
        names = [n.strip() for n in os.environ.get("TRANSFIGURE_MODELS", "").split(",") if n.strip()]
        threads = _int("TRANSFIGURE_THREADS", 0)
        return cls(
            models_dir=zoo_dir(),
            models=names or None,
            strict=_bool("TRANSFIGURE_STRICT", True),
            workers=_int("TRANSFIGURE_WORKERS", 1, minimum=1),
            threads=threads or None,
            infer_concurrency=_int("TRANSFIGURE_INFER_CONCURRENCY", 0, minimum=0),
            timeout_s=_int("TRANSFIGURE_TIMEOUT", 60, minimum=1),
            max_concurrency=_int("TRANSFIGURE_MAX_CONCURRENCY", 64, minimum=1),
            max_body_bytes=_int("TRANSFIGURE_MAX_BODY_BYTES", 0),
            max_pixels_in_flight=_int("TRANSFIGURE_MAX_PIXELS_IN_FLIGHT", 0),
            max_samples=_int("TRANSFIGURE_MAX_SAMPLES", 64, minimum=1),
            sample_batching=_bool("TRANSFIGURE_SAMPLE_BATCHING", True),
            sample_max_batch=_int("TRANSFIGURE_SAMPLE_MAX_BATCH", 256, minimum=2),
            sample_max_latency_ms=_int("TRANSFIGURE_SAMPLE_MAX_LATENCY_MS", 10_000, minimum=10),
            api_token=os.environ.get("TRANSFIGURE_API_TOKEN") or None,
            limits=Limits.from_env(),
        )
