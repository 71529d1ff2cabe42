"""Changes to BentoML's internals that the service needs, applied once by ``apply()``.

Each patch replaces one attribute of a BentoML class; its docstring says what BentoML does, what
we do instead and why. They are written against BentoML ``PINNED_VERSION`` (pyproject.toml and
bentofile.yaml pin it): ``apply()`` refuses to run on another version, naming both, because a
replaced internal may have changed meaning there. ``TRANSFIGURE_UNPINNED_BENTOML=1`` applies them
anyway (at your own risk, e.g. to try a new BentoML); ``tests/test_bentoml_patches.py`` checks that
BentoML still behaves the way each patch works around, and what each patch changes through the app.

``upstream(name)`` returns BentoML's own attribute that a patch replaced (for those tests).
BentoML's modules are imported inside the functions, after the version check, so that another
BentoML fails with the message above rather than an ImportError from a moved private module.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import JSONResponse, Response

from service.admission import RETRY_AFTER_S
from service.config import load_settings

PINNED_VERSION = "1.4.39"
FORCE_ENV = "TRANSFIGURE_UNPINNED_BENTOML"

log = logging.getLogger("bentoml.transfigure")

_UPSTREAM: dict[str, Any] = {}  # "Class.attribute" -> BentoML's own value, kept when replaced


class UnsupportedBentoML(RuntimeError):
    """The installed BentoML is not the version the patches were written against."""


def check_version(installed: str | None = None) -> None:
    """Raise ``UnsupportedBentoML`` unless BentoML is ``PINNED_VERSION`` (or ``FORCE_ENV`` is set)."""
    import bentoml

    installed = installed or bentoml.__version__
    if installed == PINNED_VERSION:
        return
    message = (
        f"service/bentoml_patches.py is written for BentoML {PINNED_VERSION}, but BentoML {installed} "
        f"is installed: install bentoml=={PINNED_VERSION}, or set {FORCE_ENV}=1 to apply the patches "
        "anyway (run tests/test_bentoml_patches.py to see which still fit)"
    )
    if load_settings().unpinned_bentoml:
        log.warning("%s; applying them because %s is set", message, FORCE_ENV)
        return
    raise UnsupportedBentoML(message)


def apply() -> None:
    """Apply every patch; a second call changes nothing. Raises ``UnsupportedBentoML`` (see module)."""
    check_version()
    for patch in _PATCHES:
        owner, attribute, replacement = patch()
        _replace(owner, attribute, replacement)


def upstream(name: str) -> Any:
    """BentoML's own ``"Class.attribute"`` that a patch replaces (whether or not it is applied yet)."""
    if name in _UPSTREAM:
        return _UPSTREAM[name]
    owner = {f"{cls.__name__}.{attr}": cls for cls, attr, _ in (p() for p in _PATCHES)}[name]
    return getattr(owner, name.split(".", 1)[1])


def _replace(owner: type, attribute: str, replacement: Callable[..., Any]) -> None:
    current = getattr(owner, attribute)
    if getattr(current, "__transfigure_patch__", False):
        return  # already applied (apply() called again, or this module imported twice)
    _UPSTREAM[f"{owner.__name__}.{attribute}"] = current
    replacement.__transfigure_patch__ = True  # type: ignore[attr-defined]
    is_static = isinstance(owner.__dict__.get(attribute), staticmethod)
    setattr(owner, attribute, staticmethod(replacement) if is_static else replacement)


# -- the patches: each returns (owner, attribute, replacement) ---------------------------------------


def _refuse_url_uploads() -> tuple[type, str, Callable[..., Any]]:
    """File fields take uploads only.

    BentoML: ``MultipartSerde.ensure_file`` downloads a URL sent as text in place of a file.
    We: refuse any non-file value with 400. Why: a public image endpoint that fetches URLs for its
    callers is a server-side request forgery hole.
    """
    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput

    async def ensure_file(obj: Any) -> UploadFile:
        if isinstance(obj, UploadFile):
            return obj
        raise BadInput(
            "image fields take a file upload (multipart/form-data); URLs and text are not accepted"
        )

    return MultipartSerde, "ensure_file", ensure_file


def _malformed_multipart_is_400() -> tuple[type, str, Callable[..., Any]]:
    """A bad multipart body is the client's error.

    BentoML: ``MultipartSerde.parse_request`` lets the form parser's errors (no boundary, a bad part
    header, too many parts) escape as 500s, silently uses the first of two files sent for one field,
    and names its temporary file after the client's file name (a 300-character name fails the OS's
    limit: 500). We: answer the first two with 400 and a message, and keep only the file name's
    extension. Why: a client's mistake must get a 4xx that says what to fix.
    """
    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput

    parse_request = MultipartSerde.parse_request

    async def guarded_parse_request(self: Any, request: Any, cls: Any) -> Any:
        try:
            form = await request.form()  # starlette caches it: parse_request below reuses it
        except (FormParserError, MultiPartException, HTTPException) as e:
            raise BadInput(
                f"the multipart/form-data body is malformed ({getattr(e, 'detail', e)}); send the "
                "image as a file field (e.g. curl -F image=@photo.jpg)"
            ) from None
        for key in form:
            values = form.getlist(key)
            if len(values) > 1:
                raise BadInput(f"field '{key[:64]}' was sent {len(values)} times; send it once")
            if isinstance(values[0], UploadFile) and values[0].filename:
                suffix = Path(values[0].filename).suffix
                values[0].filename = "upload" + (suffix if suffix[1:].isalnum() and len(suffix) <= 10 else "")
        return await parse_request(self, request, cls)

    return MultipartSerde, "parse_request", guarded_parse_request


def openapi_3_0(node: Any) -> Any:
    """BentoML's OpenAPI document made valid OpenAPI 3.0.

    Its component schemas use JSON-Schema-isms that OpenAPI 3.0 does not have: ``type: file``
    (-> ``string``/``binary``), ``type: tensor`` (-> nested arrays of numbers) and Optional fields as
    ``anyOf: [X, {type: null}]`` (-> X with ``nullable: true``).
    """
    if isinstance(node, list):
        return [openapi_3_0(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_3_0(v) for k, v in node.items()}
    kind = out.get("type")
    if kind == "file":
        out.pop("pil", None)
        out.update(type="string", format="binary")
    elif kind == "tensor":
        shape = out.get("shape")
        child: dict[str, Any] = {"type": "number"}
        for _ in range(len(shape) if isinstance(shape, list) and shape else 1):
            child = {"type": "array", "items": child}
        for key in ("format", "dtype", "shape", "dim"):
            out.pop(key, None)
        out.update(child)
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[key]
            if len(rest) == 1 and isinstance(rest[0], dict):
                out.update(rest[0])
            elif rest:
                out[key] = rest
            out["nullable"] = True
    return out


def _serve_valid_openapi() -> tuple[type, str, Callable[..., Any]]:
    """``/docs.json`` is valid OpenAPI 3.0.

    BentoML: ``ServiceAppFactory.openapi_spec_view`` serves a document that says OpenAPI 3.0 but is
    not (see ``openapi_3_0``). We: serve ``openapi_3_0`` of it. Why: clients, generators and fuzzers
    reject the original. BentoML's own client reads ``/schema.json``, which is left alone.
    """
    from _bentoml_impl.server.app import ServiceAppFactory

    async def openapi_spec_view(self: Any, req: Any) -> Response:
        try:
            return JSONResponse(openapi_3_0(self.service.openapi_spec.asdict()))
        except Exception:
            log.exception("could not generate the OpenAPI document")
            return JSONResponse({"error": "could not generate the OpenAPI document"}, status_code=500)

    return ServiceAppFactory, "openapi_spec_view", openapi_spec_view


def _overload_answer_says_when_to_retry() -> tuple[type, str, Callable[..., Any]]:
    """The answer beyond ``traffic.max_concurrency`` says when to retry.

    BentoML: ``MaxConcurrencyMiddleware`` answers 429 with no Retry-After, and counts every request,
    /sample's own hop to /sample_batch included. We: add ``Retry-After`` and a message naming the
    setting, and let the hop through. Why: a client or load balancer that honours Retry-After backs
    off; the /sample request already holds a slot, so refusing its hop turned it into a 500.
    """
    from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in self.skip_paths
            or scope["path"] == "/sample_batch"
        ):
            return await self.app(scope, receive, send)
        if self._semaphore.locked():
            answer = JSONResponse(
                {
                    "error": "the server is at its limit of requests in flight "
                    f"(TRANSFIGURE_MAX_CONCURRENCY); retry after {RETRY_AFTER_S} s"
                },
                status_code=429,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return await answer(scope, receive, send)
        async with self._semaphore:
            await self.app(scope, receive, send)

    return MaxConcurrencyMiddleware, "__call__", __call__


def _request_timer_is_cancelled() -> tuple[type, str, Callable[..., Any]]:
    """A finished request holds no memory for the rest of its timeout.

    BentoML: ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request and never
    cancels it; the timer keeps a copy of the request's contextvars (its OpenTelemetry span, ~5-10 kB)
    until it fires, ``traffic.timeout`` seconds after the answer. We: the same middleware, with the
    timer run in an empty context and cancelled once the request is done. Why: memory grew with
    request rate x timeout (docs/RELIABILITY.md, "Load").
    """

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        # an empty context, so even a pending timer holds nothing of the request
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                answer = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
                )
                await answer(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()  # asyncio drops cancelled timers from its heap in bulk

    return TimeoutMiddleware, "__call__", __call__


_PATCHES = (
    _refuse_url_uploads,
    _malformed_multipart_is_400,
    _serve_valid_openapi,
    _overload_answer_says_when_to_retry,
    _request_timer_is_cancelled,
)


# -- internals read, not replaced ------------------------------------------------------------------


def in_worker() -> bool:
    """True in a BentoML worker process (BentoML sets its index before importing the service).

    No public API says so; ``server_context.worker_index`` is None in the ``bentoml serve`` process
    itself and in plain Python.
    """
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


async def authorize_self_proxy(client: Any, token: str) -> None:
    """Send ``Authorization: Bearer <token>`` on the service's calls to itself (the batching hop).

    BentoML 1.4's self-proxy client has no public way to add a header. Its ``default_headers`` dict
    is the one its ``SessionManager`` makes aiohttp sessions from, lazily; the header goes into both,
    and a session made before this call is closed, so the next one carries the header.
    """
    bearer = f"Bearer {token}"
    headers = getattr(client, "default_headers", None)
    if isinstance(headers, dict):
        headers["Authorization"] = bearer
    manager = getattr(client, "_session_manager", None)
    if manager is not None:
        if isinstance(getattr(manager, "_headers", None), dict):
            manager._headers["Authorization"] = bearer
        await manager.close()
