"""The BentoML service: ``bentoml serve service.service:Transfigure``.

Endpoints (all POST, multipart/form-data or JSON; images are file uploads and are never fetched
from a URL):

* ``/translate`` — ``image`` + ``model`` (a translate model) [+ ``max_side``, ``format`` png|jpeg|webp]
  -> the translated image at the input's own size: a 12-MP photo comes back at 12 MP. ``max_side``
  is an opt-in downscale of the input first (it can only lower ``TRANSFIGURE_MAX_SIDE``, which is
  off by default). A model whose network runs at full resolution (card ``input.multiple_of`` > 1)
  runs on a copy at most ``TRANSFIGURE_FULLRES_MAX_SIDE`` (1024) px a side, and its output is resized
  back to the input's size; the answer then carries ``X-Transfigure-Processed-Size: WxH``, the size
  the network ran at. Inputs are bounded instead by ``TRANSFIGURE_MAX_BYTES`` (413),
  ``TRANSFIGURE_MAX_PIXELS`` (40 MP, 413) and ``TRANSFIGURE_MAX_ASPECT`` (400), and a worker by
  ``TRANSFIGURE_MAX_PIXELS_IN_FLIGHT`` (503 with Retry-After while it is full).
* ``/upscale`` — ``image`` + ``model`` (an upscale model) [+ ``format``] -> the image, ``scale`` x larger,
  computed in overlapping tiles (input at most ``TRANSFIGURE_MAX_UPSCALE_PIXELS``).
  Both answer in ``format`` when it is given, else in the format the ``Accept`` header asks for
  (``image/jpeg``, ``image/webp``; ``*/*``, none or another type: PNG), with its Content-Type and
  ``Vary: Accept``; JPEG or WebP answers of large images encode several times faster than PNG.
  Both answer with a ``Server-Timing`` header: decode, queue (waiting for the inference slot), infer
  and encode, in ms.
* ``/sample`` — ``model`` + ``label`` (class name or index) + ``n`` (1..64) [+ ``seed``, ``grid``] ->
  one PNG grid (``grid=true``, default) or JSON ``{"seed", "label", "images": [base64 PNG, ...]}``
  (``grid=false``). The seed used is returned in the ``X-Seed`` header; the same seed gives the
  same bytes. A style-based model (card ``style``) also takes ``truncation`` (psi in [0, 1]),
  ``mix`` (``{"seed", "layer"}``: the second seed's styles from that layer on) and ``interpolate``
  (``{"seed", "steps"}``: a strip of ``steps`` images towards the second seed, in place of ``n``);
  see ``service.sampling``. Samples of concurrent requests are batched (``/sample_batch``,
  internal); a request with nothing to batch with runs directly.
* Overload: ``/translate``, ``/upscale`` and ``/sample`` wait for an inference lane (first come,
  first served) at most ``TRANSFIGURE_MAX_QUEUE_MS`` from their arrival; a request expected to wait
  longer is refused at once, one whose turn has not come by then is refused instead of run late:
  503 with ``Retry-After`` (the expected drain time) and ``{"error", "reason", "retry_after_s"}``
  (``service.admission``). ``TRANSFIGURE_MAX_CONCURRENCY`` stays the outer bound (429).
* ``/models`` (GET or POST) — the cards, plus models that failed to load and why.
* BentoML's ``/livez``, ``/readyz`` (200 only once every model is loaded and warmed up),
  ``/metrics`` (Prometheus) and ``/docs.json`` (OpenAPI).
* ``/demo/`` — the demo page (``service/demo.py``, ``service/static/``); ``/`` redirects there and
  BentoML's Swagger page moves to ``/docs``.

Bad input is a 4xx with ``{"error": ...}`` (BentoML wraps it in a one-element list), never a 500.
The heavy lifting is in ``service.imaging`` and ``service.zoo``; configuration in ``service.config``.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aiohttp
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException, InvalidArgument
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response

from models.card import CardError, ModelCard
from service import bentoml_patches, imaging, sampling
from service.admission import REFUSAL_REASONS, PixelBudget, QueueAdmission, ServerBusy, Ticket
from service.config import get_settings
from service.demo import DemoMiddleware
from service.middleware import ARRIVAL_KEY, GuardMiddleware
from service.providers import plan_from_settings
from service.zoo import (
    InferenceSlots,
    LoadedModel,
    ModelNotFound,
    WrongTask,
    Zoo,
    preflight,
    resolved_threads,
)

bentoml_patches.apply()

log = logging.getLogger("bentoml.transfigure")
T = TypeVar("T")

CONFIG = get_settings()  # read once, at import: a bad value stops the service before it serves
# CUDA or CPU (TRANSFIGURE_PROVIDERS): an explicit `cuda` that is not there stops it here too; the
# serving process logs the automatic choice, its workers make the same one silently
PROVIDERS = plan_from_settings(CONFIG, announce=not bentoml_patches.in_worker())
if CONFIG.strict and not bentoml_patches.in_worker():
    # Refuse to start on a bad card or file, naming it, before BentoML spawns workers (a worker
    # failing in __init__ is restarted forever). Workers skip it: the serving process checked.
    preflight(CONFIG.models_dir, CONFIG.models, providers=PROVIDERS)

ImageFile = Annotated[Path, ContentType("image/*")]
MAX_NAME_CHARS = 256  # model and label names longer than this are refused without being echoed
# A translate input larger than this runs alone on every ORT thread (InferenceSlots, exclusive): its
# inference holds memory in proportion to its pixels, so two large ones side by side would double it.
EXCLUSIVE_ABOVE_PIXELS = 512 * 512
# Set when a full-resolution network ran on a smaller copy (imaging.network_size): "WxH" it ran at.
PROCESSED_SIZE_HEADER = "X-Transfigure-Processed-Size"
# The endpoints that wait for an inference lane: admitted by expected queueing time (QueueAdmission).
QUEUED_PATHS = frozenset({"/translate", "/upscale", "/sample"})
TICKET_KEY = "transfigure.ticket"  # the scope key of a request's admission (GuardMiddleware)


def _sample_rows(rows: Any) -> np.ndarray:
    """Check /sample_batch rows while parsing, before BentoML's batcher concatenates requests.

    A scalar or a row of another width reaching the batcher would fail (500) every request batched
    with it, the server's own /sample hops included.
    """
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        # e.g. {"rows": {}} or [{}]: numpy raises TypeError, which pydantic would not turn into a 400
        raise ValueError("rows must be an N x (5 + 2 x latent) array of numbers") from None
    instance = _CURRENT.get("instance")
    width = sampling.row_width(instance._latent) if instance is not None else None
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width) or len(arr) == 0:
        raise ValueError(f"rows must be an N x {width or '(5 + 2 x latent)'} array, got shape {arr.shape}")
    return arr


SampleRows = Annotated[np.ndarray, AfterValidator(_sample_rows)]


class MixRequest(BaseModel):
    """``/sample``'s ``mix``: from style layer ``layer`` on (0..the card's ``style.layers``), the styles
    of the samples of ``seed``."""

    model_config = ConfigDict(extra="forbid")
    seed: int
    layer: int


class InterpolateRequest(BaseModel):
    """``/sample``'s ``interpolate``: ``steps`` images from the first sample of the request's seed to
    the first sample of ``seed``, in W."""

    model_config = ConfigDict(extra="forbid")
    seed: int
    steps: int


_CURRENT: dict[str, Transfigure] = {}  # the service instance of this worker, for the middleware


def effective_max_side(configured: int | None, requested: int | None) -> int | None:
    """The downscale a /translate request gets: none unless asked for, by the request's ``max_side``
    or the server's ``TRANSFIGURE_MAX_SIDE``; a request can lower the server's, never raise it."""
    if requested is None:
        return configured
    if requested < 1:
        raise InvalidArgument(f"max_side must be a positive number of pixels, got {requested}")
    return min(requested, configured) if configured else requested


def _client_error(e: Exception) -> BentoMLException:
    status = getattr(e, "status_code", 400)
    if status == 400:
        return InvalidArgument(str(e))
    return BentoMLException(str(e), error_code=HTTPStatus(status))


class _StageTimer:
    """Wall time of a request's stages, for the ``Server-Timing`` response header (W3C).

    Browsers' developer tools show it, and ``tests/benchmarks/serve_bench.py`` uses it to split the
    served latency into decode / queue (waiting for the inference slot) / infer / encode and the rest.
    """

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.stages: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append((name, (now - self._last) * 1000))
        self._last = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.stages)


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run blocking work off the event loop; our own input errors become 4xx."""
    try:
        return await anyio.to_thread.run_sync(func, *args)
    except (imaging.ImageError, ModelNotFound, WrongTask) as e:
        raise _client_error(e) from None


def busy_body(e: ServerBusy) -> dict[str, Any]:
    """The JSON of a 503: the message, why (``REFUSAL_REASONS``) and when to retry."""
    return {"error": str(e), "reason": e.reason, "retry_after_s": e.retry_after_s}


def _busy(e: ServerBusy, ctx: bentoml.Context) -> Response:
    """503 with the reason and Retry-After (BentoML would hide a 5xx exception's message).

    BentoML sets the status of an answer from ``ctx`` when the API takes one, so it is set there too.
    """
    instance = _CURRENT.get("instance")
    if instance is not None:
        instance.metrics.refused(e.reason)
    ctx.response.status_code = 503
    return JSONResponse(busy_body(e), status_code=503, headers={"Retry-After": str(e.retry_after_s)})


def _arrival(ctx: bentoml.Context) -> float:
    """When the request arrived (its body received, ``time.monotonic()``; GuardMiddleware stamps it)."""
    try:
        return float(ctx.request.scope[ARRIVAL_KEY])
    except (AttributeError, KeyError, TypeError, ValueError):
        return time.monotonic()


class _Metrics:
    """The service's own Prometheus metrics (in /metrics beside BentoML's), made in the worker.

    ``transfigure_queue_seconds{endpoint}``: how long admitted requests waited for an inference lane,
    from their arrival (their own decoding not counted); ``transfigure_refusals_total{reason}``: 503s
    by reason (``expected_wait``, ``queue_timeout``, ``pixel_budget``); gauges: the queueing target
    (``transfigure_queue_target_seconds``), the expected wait of a request arriving now as of the
    last admission decision (``transfigure_expected_wait_seconds``), admitted requests not yet done
    (``transfigure_queue_admitted``) and the inference lanes (``transfigure_inference_lanes``).
    """

    _made: dict[str, Any] = {}  # one set per process: prometheus_client refuses a second registration

    def __init__(self, admission: QueueAdmission) -> None:
        self.admission = admission
        if not self._made:
            import prometheus_client as prom  # here, in the worker: BentoML has set its multiprocess dir

            self._made.update(
                queue=prom.Histogram(
                    "transfigure_queue_seconds",
                    "Time admitted requests waited for an inference lane, from their arrival",
                    ["endpoint"],
                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                ),
                refusals=prom.Counter(
                    "transfigure_refusals", "Requests refused with 503 (server busy), by reason", ["reason"]
                ),
                target=prom.Gauge(
                    "transfigure_queue_target_seconds",
                    "How long a request may wait for an inference lane (TRANSFIGURE_MAX_QUEUE_MS)",
                    multiprocess_mode="livemax",
                ),
                expected=prom.Gauge(
                    "transfigure_expected_wait_seconds",
                    "Expected wait of a request arriving now, as of the last admission decision",
                    multiprocess_mode="livemax",
                ),
                admitted=prom.Gauge(
                    "transfigure_queue_admitted",
                    "Admitted requests whose inference has not ended",
                    multiprocess_mode="livesum",
                ),
                lanes=prom.Gauge(
                    "transfigure_inference_lanes",
                    "Inferences a worker runs at once",
                    multiprocess_mode="livesum",
                ),
            )
        m = self._made
        m["target"].set(admission.target_s)
        m["lanes"].set(admission.lanes)
        for reason in REFUSAL_REASONS:
            m["refusals"].labels(reason)  # every reason listed from the start, at 0

    def refused(self, reason: str) -> None:
        self._made["refusals"].labels(reason).inc()
        self.update()

    def queued(self, endpoint: str, ticket: Ticket) -> None:
        if ticket.queue_s is not None:
            self._made["queue"].labels(endpoint).observe(ticket.queue_s)
        self.update()

    def update(self) -> None:
        self._made["expected"].set(self.admission.expected_wait())
        self._made["admitted"].set(self.admission.in_flight)


@bentoml.service(
    name="transfigure",
    workers=CONFIG.workers,
    threads=1,  # sync APIs (the sample batches) run one at a time: ORT already uses every core
    traffic={"timeout": CONFIG.timeout, "max_concurrency": CONFIG.max_concurrency},
)
class Transfigure:
    def __init__(self) -> None:
        self.config = CONFIG
        self.ready = False
        # on CUDA one inference at a time by default: runs on one device queue there anyway, and each
        # concurrent one would hold its own working set in the arena
        default_lanes = 1 if PROVIDERS.uses_cuda else resolved_threads(CONFIG.threads, CONFIG.workers)
        lanes = CONFIG.infer_concurrency or default_lanes
        try:
            self.zoo = Zoo.load(
                CONFIG.models_dir,
                names=CONFIG.models,
                strict=CONFIG.strict,
                threads=CONFIG.threads,
                workers=CONFIG.workers,
                narrow=lanes > 1,
                providers=PROVIDERS,
            )
        except CardError as e:
            log.error("refusing to start: %s (set TRANSFIGURE_STRICT=0 to start without this model)", e)
            raise
        if len(self.zoo) == 0:
            log.warning(
                "no models found in %s: every model endpoint will answer 400 until one is exported there "
                "(see docs/training.md)",
                CONFIG.models_dir,
            )
        for name, why in self.zoo.unavailable.items():
            log.warning("model '%s' unavailable: %s", name, why)
        self.zoo.warmup()
        self._infer = InferenceSlots(lanes)
        self._pixels = PixelBudget(CONFIG.max_pixels_in_flight)
        self._admission = QueueAdmission(CONFIG.max_queue_ms / 1000, lanes)
        self.metrics = _Metrics(self._admission)
        self._sample_names = self.zoo.names("sample")
        self._latent = max((self.zoo.get(n).card.latent_dim or 0 for n in self._sample_names), default=0)
        self._proxy_auth_done = False
        self._samples_in_flight = 0  # /sample requests past validation (event loop only: no lock)
        self.ready = True
        _CURRENT["instance"] = self
        log.info("models ready: %s", ", ".join(f"{m.name} ({m.provider})" for m in self.zoo) or "(none)")

    def __is_ready__(self) -> bool:
        return self.ready

    # -- helpers -------------------------------------------------------------------------------
    def _model(self, name: str, task: str) -> LoadedModel:
        name = (name or "").strip()
        if not name:
            fitting = self.zoo.names(task)
            if len(fitting) == 1:  # one model of this task: the name may be left out
                return self.zoo.get(fitting[0], task)
            listing = ", ".join(fitting) or "(none loaded)"
            raise InvalidArgument(f"field 'model' is required: /{task} needs one of: {listing}")
        if len(name) > MAX_NAME_CHARS:  # errors quote the name: do not echo a megabyte back
            listing = ", ".join(self.zoo.names(task)) or "(none loaded)"
            raise InvalidArgument(
                f"unknown model '{name[:40]}...' ({len(name)} characters): /{task} needs one of: {listing}"
            )
        try:
            return self.zoo.get(name, task)
        except (ModelNotFound, WrongTask) as e:
            raise InvalidArgument(str(e)) from None

    @staticmethod
    def _format(fmt: str, ctx: bentoml.Context) -> str:
        """The answer's format: the ``format`` field when given, else what ``Accept`` asks for."""
        if not fmt.strip():
            return imaging.format_from_accept(ctx.request.headers.get("accept"))
        try:
            return imaging.normalize_format(fmt)
        except imaging.ImageError as e:
            raise InvalidArgument(str(e)) from None

    def listing(self) -> dict[str, Any]:
        root = str(self.zoo.root)
        out: dict[str, Any] = {
            "models": [
                dict(
                    m.card.model_dump(mode="json"),
                    available=True,
                    provider=m.provider,
                    served_file=m.path.name,
                )
                for m in self.zoo
            ],
            "unavailable": {n: why.replace(root, "<zoo>") for n, why in self.zoo.unavailable.items()},
        }
        if not self.zoo.models:
            out["message"] = "no models found: export one into the zoo (TRANSFIGURE_MODELS_DIR) and restart"
        return out

    # -- translate / upscale -------------------------------------------------------------------
    def _translate_pixels(self, card: ModelCard, size: tuple[int, int], max_side: int | None) -> int:
        """Pixels the network runs on for an input of ``size`` (after the downscale it asks for)."""
        run_w, run_h = imaging.network_size(
            card, imaging.fit_within(size, max_side), self.config.limits.fullres_max_side
        )
        return run_w * run_h

    def _admit(
        self, ctx: bentoml.Context, model: LoadedModel, pixels: int, exclusive: bool = False
    ) -> Ticket:
        """The request's admission: made at the door (GuardMiddleware, before the body was read),
        now told the model and size; else admitted here by its expected wait, or ServerBusy."""
        ticket = getattr(ctx.request, "scope", {}).get(TICKET_KEY)
        if isinstance(ticket, Ticket):
            return self._admission.assign(ticket, model.name, pixels, _arrival(ctx), exclusive)
        return self._admission.admit(model.name, pixels, _arrival(ctx), exclusive)

    def _translate_sync(
        self, model: LoadedModel, data: bytes, max_side: int | None, fmt: str, ticket: Ticket | None = None
    ) -> tuple[bytes, str, str, dict[str, str]]:
        timer = _StageTimer()
        limits = self.config.limits
        w, h = imaging.peek_size(data, limits)  # 4xx for a bad or oversized file, before any memory is held
        with self._pixels.hold(w * h):
            start = time.perf_counter()
            img = imaging.decode_image(data, limits)
            img = imaging.resize_to_max_side(img, max_side)
            timer.lap("decode")
            run_w, run_h = imaging.network_size(model.card, img.size, limits.fullres_max_side)
            with self._admission.run(
                self._infer,
                model.name,
                run_w * run_h,
                ticket,
                exclusive=run_w * run_h > EXCLUSIVE_ABOVE_PIXELS,
                own_work_s=time.perf_counter() - start,
            ):
                timer.lap("queue")
                out = imaging.translate_image(model, img, limits.fullres_max_side)
                timer.lap("infer")
            del img
            body, media_type = imaging.encode_image(out, fmt)
            timer.lap("encode")
        extra: dict[str, str] = {}
        if out.processed_size is not None:
            extra[PROCESSED_SIZE_HEADER] = "{}x{}".format(*out.processed_size)
        return body, media_type, timer.header(), extra

    def _upscale_sync(
        self, model: LoadedModel, data: bytes, fmt: str, ticket: Ticket | None = None
    ) -> tuple[bytes, str, str]:
        timer = _StageTimer()
        limits = self.config.limits
        w, h = imaging.peek_size(data, limits)
        if w * h > limits.max_upscale_pixels:
            raise imaging.ImageError(
                f"image is {w}x{h} ({w * h / 1e6:.1f} MP); /upscale takes at most "
                f"{limits.max_upscale_pixels / 1e6:.1f} MP: downscale it or cut it into parts",
                status_code=413,
            )
        with self._pixels.hold(w * h):
            start = time.perf_counter()
            img = imaging.decode_image(data, limits)
            timer.lap("decode")
            with self._admission.run(
                self._infer, model.name, w * h, ticket, own_work_s=time.perf_counter() - start
            ):
                timer.lap("queue")
                out = imaging.upscale_image(model, img, tile=limits.tile, overlap=limits.tile_overlap)
                timer.lap("infer")
            del img
            body, media_type = imaging.encode_image(out, fmt)
            timer.lap("encode")
        return body, media_type, timer.header()

    @bentoml.api
    async def translate(
        self,
        image: Path,
        ctx: bentoml.Context,
        model: str = "",
        max_side: int | None = None,
        format: str = "",
    ) -> ImageFile:
        """Translate an image with a `translate` model at its own size (max_side: opt-in downscale first).

        A model whose network runs at full resolution (card `input.multiple_of` > 1) runs on a copy of
        at most TRANSFIGURE_FULLRES_MAX_SIDE px a side and its output is resized back to the input's
        size; the answer's `X-Transfigure-Processed-Size` header (WxH) then names the size it ran at.
        `format` png | jpeg | webp; when left out, the `Accept` header decides (PNG by default).
        """
        m = self._model(model, "translate")
        fmt = self._format(format, ctx)
        side = effective_max_side(self.config.limits.max_side, max_side)
        data = image.read_bytes()
        try:
            pixels = self._translate_pixels(m.card, imaging.peek_size(data, self.config.limits), side)
        except imaging.ImageError as e:
            raise _client_error(e) from None
        try:
            ticket = self._admit(ctx, m, pixels, exclusive=pixels > EXCLUSIVE_ABOVE_PIXELS)
            try:
                body, media_type, timing, extra = await _in_thread(
                    self._translate_sync, m, data, side, fmt, ticket
                )
            finally:
                self._admission.release(ticket)
        except ServerBusy as e:
            return _busy(e, ctx)  # type: ignore[return-value]
        self.metrics.queued("translate", ticket)
        headers = {"X-Model": m.name, "Server-Timing": timing, "Vary": "Accept", **extra}
        return Response(body, media_type=media_type, headers=headers)  # type: ignore[return-value]

    @bentoml.api
    async def upscale(
        self, image: Path, ctx: bentoml.Context, model: str = "", format: str = ""
    ) -> ImageFile:
        """Super-resolve an image with an `upscale` model; exactly `scale` times larger out.

        `format` png | jpeg | webp; when left out, the `Accept` header decides (PNG by default).
        """
        m = self._model(model, "upscale")
        fmt = self._format(format, ctx)
        data = image.read_bytes()
        try:
            w, h = imaging.peek_size(data, self.config.limits)
        except imaging.ImageError as e:
            raise _client_error(e) from None
        try:
            ticket = self._admit(ctx, m, w * h)
            try:
                body, media_type, timing = await _in_thread(self._upscale_sync, m, data, fmt, ticket)
            finally:
                self._admission.release(ticket)
        except ServerBusy as e:
            return _busy(e, ctx)  # type: ignore[return-value]
        self.metrics.queued("upscale", ticket)
        headers = {"X-Model": m.name, "Server-Timing": timing, "Vary": "Accept"}
        return Response(body, media_type=media_type, headers=headers)  # type: ignore[return-value]

    # -- sample --------------------------------------------------------------------------------
    def _sample_rows_sync(self, rows: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        """Rows (``service.sampling``: model index, label, controls, latents) -> uint8 rows of
        flattened S x S x C images.

        ``ticket``: the admitted /sample request these rows are (run directly, not batched).
        """
        groups = []
        for idx in np.unique(rows[:, sampling.MODEL]).astype(int):
            model = self.zoo.get(self._sample_names[idx], "sample")
            sel = np.flatnonzero(rows[:, sampling.MODEL] == idx)
            card = model.card
            feeds = sampling.feeds(card, rows[sel], self._latent)
            pixels = len(sel) * (card.output_size or 1) ** 2
            with self._admission.run(self._infer, model.name, pixels, ticket):
                images = imaging.samples_to_uint8(model, model.run(feeds))
            groups.append((sel, images.reshape(len(sel), -1)))
        width = max(g[1].shape[1] for g in groups)
        out = np.zeros((len(rows), width), np.uint8)
        for sel, flat in groups:
            out[sel, : flat.shape[1]] = flat
        return out

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=max(CONFIG.sample_max_batch, CONFIG.max_samples),
        max_latency_ms=CONFIG.sample_max_latency_ms,
    )
    def sample_batch(self, rows: SampleRows) -> list[str]:
        """Internal (used by /sample for adaptive batching): float rows (``service.sampling``).

        Returns one base64 string per row: the sample's uint8 pixels, flattened (a third of the bytes
        of a JSON array of numbers, and no per-number validation on the way back).
        """
        rows = np.asarray(rows, dtype=np.float32)
        if not self._sample_names:
            raise BadInput("no sample models are loaded")
        if len(rows) > max(CONFIG.sample_max_batch, 1):
            raise BadInput(f"at most {CONFIG.sample_max_batch} rows, got {len(rows)}")
        try:
            sampling.check_rows(rows, [self.zoo.get(n).card for n in self._sample_names], self._latent)
        except sampling.ControlError as e:
            raise BadInput(str(e)) from None
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in self._sample_rows_sync(rows)]

    async def _run_rows(self, rows: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        client = getattr(self, "to_async", None)
        if getattr(self, "__self_proxy__", None) is None or client is None:
            # outside a server (plain Python use): no batching, run directly
            return await anyio.to_thread.run_sync(self._sample_rows_sync, rows, ticket)
        if self._samples_in_flight == 1 or not self.config.sample_batching:
            # Nothing to batch with: the hop through BentoML's batcher (an HTTP request to ourselves)
            # would only add its cost (~8 ms, i.e. 2x a 16-sample draw). A request that arrives
            # while this one runs sees two in flight and goes to the batcher. With batching off,
            # concurrent requests run side by side in the inference lanes instead.
            return await anyio.to_thread.run_sync(self._sample_rows_sync, rows, ticket)
        if self.config.api_token and not self._proxy_auth_done:
            # the hop goes back through our own middleware, token check included
            await bentoml_patches.authorize_self_proxy(client, self.config.api_token)
            self._proxy_auth_done = True
        try:
            encoded = await client.sample_batch(rows)
            return np.stack([np.frombuffer(base64.b64decode(row), np.uint8) for row in encoded])
        except aiohttp.ClientConnectionError as e:
            # The hop reuses keep-alive connections that the server may close at that very moment
            # ("Server disconnected", seen under load). Samples are pure: compute these here instead.
            log.warning("sample batching hop failed (%s); running this request unbatched", e)
            return await anyio.to_thread.run_sync(self._sample_rows_sync, rows)

    @bentoml.api
    async def sample(
        self,
        ctx: bentoml.Context,
        model: str = "",
        label: str | int = 0,
        n: int | None = None,
        seed: int | None = None,
        grid: bool = True,
        truncation: float = 1.0,
        mix: MixRequest | None = None,
        interpolate: InterpolateRequest | None = None,
    ) -> Annotated[Path, ContentType("image/png")]:
        """Draw `n` samples (default 16) of class `label` (name or index); PNG grid, or JSON of base64
        PNGs. Style-based models: `truncation` (psi in [0, 1]), `mix` {seed, layer}: the second seed's
        styles from that layer on; `interpolate` {seed, steps}: a strip towards the second seed."""
        m = self._model(model, "sample")
        card = m.card
        if isinstance(label, str) and len(label) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"unknown label '{label[:40]}...' ({len(label)} characters): use a class name or index "
                "listed in /models"
            )
        try:
            label_idx = card.class_index(label)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if n is not None and interpolate is not None:
            raise InvalidArgument("n does not apply with interpolate: the strip has interpolate.steps images")
        n = 16 if n is None else n
        if not 1 <= n <= self.config.max_samples:
            raise InvalidArgument(f"n must be between 1 and {self.config.max_samples}, got {n}")
        if seed is None:
            seed = secrets.randbits(31)
        elif not 0 <= seed < 2**63:
            raise InvalidArgument(f"seed must be between 0 and 2**63-1, got {seed}")
        controls = sampling.Controls(
            truncation=truncation,
            mix=sampling.Mix(mix.seed, mix.layer) if mix is not None else None,
            interpolate=sampling.Interpolation(interpolate.seed, interpolate.steps) if interpolate else None,
        )
        try:
            sampling.check_controls(card, controls, self.config.max_samples)
        except sampling.ControlError as e:
            raise InvalidArgument(str(e)) from None
        assert card.output_size is not None
        index = self._sample_names.index(m.name)
        rows = sampling.plan_rows(card, index, self._latent, label_idx, n, seed, controls)
        n = len(rows)
        try:
            # a batched request's rows run in /sample_batch: it counts in the expected wait until done
            ticket = self._admit(ctx, m, n * card.output_size**2)
            self._samples_in_flight += 1
            try:
                flat = await self._run_rows(rows, ticket)
            finally:
                self._samples_in_flight -= 1
                self._admission.release(ticket)
        except ServerBusy as e:
            return _busy(e, ctx)  # type: ignore[return-value]
        self.metrics.queued("sample", ticket)
        s, c = card.output_size, card.output.channels
        images = flat[:, : s * s * c].reshape(n, s, s, c)
        headers = {"X-Seed": str(seed), "X-Model": m.name, "X-Label": card.classes[label_idx]}  # type: ignore[index]
        if grid:
            nrow = n if interpolate is not None else None  # an interpolation is one strip
            body, media_type = await anyio.to_thread.run_sync(
                lambda: imaging.encode_image(imaging.make_grid(images, nrow=nrow))
            )
            return Response(body, media_type=media_type, headers=headers)  # type: ignore[return-value]
        encoded = [base64.b64encode(imaging.encode_image(im)[0]).decode("ascii") for im in images]
        payload = {"model": m.name, "label": card.classes[label_idx], "seed": seed, "images": encoded}  # type: ignore[index]
        return JSONResponse(payload, headers=headers)  # type: ignore[return-value]

    # -- models --------------------------------------------------------------------------------
    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        """The model cards (also at GET /models), plus models that failed to load and why."""
        return self.listing()


def _busy_now(path: str, scope: dict[str, Any]) -> tuple[Any, int] | None:
    """GuardMiddleware's admission before a body is read: refused at once while the expected wait is
    too long, else admitted (the ticket goes in the scope, and counts in the wait of later requests
    while this one is received and parsed)."""
    instance = _CURRENT.get("instance")
    if instance is None or path not in QUEUED_PATHS:
        return None
    try:
        scope[TICKET_KEY] = instance._admission.admit_at_door()
    except ServerBusy as e:
        instance.metrics.refused(e.reason)
        return busy_body(e), e.retry_after_s
    return None


def _door_done(scope: dict[str, Any]) -> None:
    """The request has been answered: its admission no longer counts (whatever answered it)."""
    ticket, instance = scope.pop(TICKET_KEY, None), _CURRENT.get("instance")
    if isinstance(ticket, Ticket) and instance is not None:
        instance._admission.release(ticket)


def _models_json() -> Any:
    instance = _CURRENT.get("instance")
    return instance.listing() if instance else {"error": "the service is still starting"}


# The first middleware added runs outermost: the demo page (/, /demo/, /docs; service/demo.py) loads
# without the token, and the API calls it makes still pass the guard's token check and body limit.
Transfigure.add_asgi_middleware(DemoMiddleware)
Transfigure.add_asgi_middleware(
    GuardMiddleware,
    max_body_bytes=CONFIG.max_body_bytes,
    api_token=CONFIG.api_token,
    models_json=_models_json,
    busy=_busy_now,
    done=_door_done,
)
