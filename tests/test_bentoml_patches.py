"""service/bentoml_patches.py: applied once, on the pinned BentoML only; per patch, that BentoML
still behaves the way the patch works around (these fail when an upgrade fixes or moves it), and
what the patch changes. No server: BentoML's own classes, and the service's app built in-process.

Through the real server the patches are also exercised by tests/test_service.py (a URL in a file
field), tests/test_bad_inputs.py (malformed multipart, a field sent twice, a long file name) and
tests/test_load.py (429 with Retry-After under overload, flat memory per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
import json
import threading
import weakref
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bentoml
import httpx
import pytest
import tomllib
import yaml
from _bentoml_impl.serde import MultipartSerde
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from bentoml.exceptions import BadInput
from packaging.requirements import Requirement
from starlette.requests import Request

from service import bentoml_patches
from service.bentoml_patches import FORCE_ENV, PINNED_VERSION, UnsupportedBentoML, upstream

REPO = Path(__file__).resolve().parent.parent
PATCHED = {  # "Class.attribute" -> the parameters BentoML's own version takes (and ours too)
    "MultipartSerde.ensure_file": ["obj"],
    "MultipartSerde.parse_request": ["self", "request", "cls"],
    "ServiceAppFactory.openapi_spec_view": ["self", "req"],
    "MaxConcurrencyMiddleware.__call__": ["self", "scope", "receive", "send"],
    "TimeoutMiddleware.__call__": ["self", "scope", "receive", "send"],
}

bentoml_patches.apply()


# -- apply() --------------------------------------------------------------------------------------


def _current(name: str) -> Any:
    owner, attribute = name.split(".")
    classes = (MultipartSerde, ServiceAppFactory, MaxConcurrencyMiddleware, TimeoutMiddleware)
    return getattr({c.__name__: c for c in classes}[owner], attribute)


def test_apply_replaces_each_attribute_once() -> None:
    before = {name: (_current(name), upstream(name)) for name in PATCHED}
    bentoml_patches.apply()
    for name, (patched, original) in before.items():
        assert _current(name) is patched and upstream(name) is original, name
        assert patched is not original and patched.__module__ == "service.bentoml_patches", name
        assert original.__module__.startswith(("_bentoml_impl", "bentoml")), name


@pytest.mark.parametrize("name", list(PATCHED))
def test_the_patched_attribute_keeps_bentomls_signature(name: str) -> None:
    assert list(inspect.signature(upstream(name)).parameters) == PATCHED[name]
    assert list(inspect.signature(_current(name)).parameters) == PATCHED[name]


def test_another_bentoml_version_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.setattr(bentoml, "__version__", "1.5.0")
    with pytest.raises(UnsupportedBentoML) as e:
        bentoml_patches.apply()
    assert "BentoML 1.5.0 is installed" in str(e.value) and f"bentoml=={PINNED_VERSION}" in str(e.value)
    assert FORCE_ENV in str(e.value)
    monkeypatch.setenv(FORCE_ENV, "1")
    bentoml_patches.apply()  # forced: applies (here: already applied, so nothing changes)


def test_the_pin_is_what_is_installed_and_packaged() -> None:
    assert bentoml.__version__ == PINNED_VERSION
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "bentoml"]
    assert str(req.specifier) == f"=={PINNED_VERSION}"
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert f"bentoml=={PINNED_VERSION}" in bento["python"]["packages"]
    assert "service/bentoml_patches.py" in bento["include"]


# -- helpers -----------------------------------------------------------------------------------------


@bentoml.service
class _Probe:
    """A service with one file field, for BentoML's multipart parser."""

    @bentoml.api
    def f(self, image: Path, model: str = "") -> str:
        return model


def _multipart_request(body: bytes, boundary: str | None = "b") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    headers = [(b"content-type", content_type.encode())]
    return Request(
        {"type": "http", "method": "POST", "path": "/f", "headers": headers, "query_string": b""}, receive
    )


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--b--\r\n"


async def _parse(parse_request: Any, body: bytes, boundary: str | None = "b") -> tuple[str, bytes]:
    """(the model field, the bytes of the image file) as BentoML's parser hands them to the API."""
    request = _multipart_request(body, boundary)
    with _Probe.context.in_request(request):
        parsed = await parse_request(MultipartSerde(), request, _Probe.apis["f"].input_spec)
        return parsed.model, parsed.image.read_bytes()


class _Spy:
    """An HTTP server on loopback that records the paths asked of it."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"fetched")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/cat.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- _refuse_url_uploads ------------------------------------------------------------------------------


def test_bentoml_fetches_a_url_sent_for_a_file_and_the_patch_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BentoML's own guard around the download (refusing private addresses, under uvloop only) is
    taken out here, so that a spy on loopback stands in for any public host."""
    from _bentoml_impl import serde

    monkeypatch.setattr(serde, "make_safe_connect", contextlib.nullcontext)
    spy = _Spy()
    try:
        fetched = asyncio.run(upstream("MultipartSerde.ensure_file")(spy.url))
        assert spy.hits == ["/cat.png"] and fetched.file.read() == b"fetched"  # what we patch against
        with pytest.raises(BadInput, match="URLs and text are not accepted"):
            asyncio.run(MultipartSerde.ensure_file(spy.url))
        assert spy.hits == ["/cat.png"]  # not fetched again
    finally:
        spy.close()


# -- _malformed_multipart_is_400 ------------------------------------------------------------------


MALFORMED = {
    "no boundary": (b"--x--", None),
    "a bad part header": (b"--b\r\nnonsense[]\r\n\r\n--b--", "b"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_bentoml_lets_a_malformed_body_escape_and_the_patch_makes_it_bad_input(case: str) -> None:
    body, boundary = MALFORMED[case]
    with pytest.raises(Exception) as e:
        asyncio.run(_parse(upstream("MultipartSerde.parse_request"), body, boundary))
    assert not isinstance(e.value, BadInput)  # what we patch against: a 500
    with pytest.raises(BadInput, match="multipart/form-data body is malformed"):
        asyncio.run(_parse(MultipartSerde.parse_request, body, boundary))


def test_bentoml_takes_the_first_of_two_files_and_the_patch_refuses_them() -> None:
    body = _multipart([("image", "a.png", b"first"), ("image", "b.png", b"second"), ("model", None, b"m")])
    assert asyncio.run(_parse(upstream("MultipartSerde.parse_request"), body)) == ("m", b"first")
    with pytest.raises(BadInput, match="field 'image' was sent 2 times"):
        asyncio.run(_parse(MultipartSerde.parse_request, body))


def test_bentoml_names_its_file_after_the_clients_and_the_patch_keeps_only_the_extension() -> None:
    body = _multipart([("image", "x" * 300 + ".png", b"data"), ("model", None, b"m")])
    with pytest.raises(OSError, match="too long"):
        asyncio.run(_parse(upstream("MultipartSerde.parse_request"), body))
    assert asyncio.run(_parse(MultipartSerde.parse_request, body)) == ("m", b"data")


# -- _serve_valid_openapi ---------------------------------------------------------------------------


def _schema_types(node: Any) -> list[Any]:
    if isinstance(node, list):
        return [t for v in node for t in _schema_types(v)]
    if not isinstance(node, dict):
        return []
    return [node.get("type")] + [t for v in node.values() for t in _schema_types(v)]


@pytest.fixture(scope="module")
def service_app() -> tuple[Any, dict[str, str]]:
    """The service's Starlette app, built as ``bentoml serve`` builds it (no lifespan: no models)."""
    from service.service import CONFIG, Transfigure

    auth = {"Authorization": f"Bearer {CONFIG.api_token}"} if CONFIG.api_token else {}
    return Transfigure.to_asgi(is_main=True), auth


def test_bentoml_documents_types_openapi_3_0_lacks_and_the_app_serves_valid_ones(service_app) -> None:
    from service.service import Transfigure

    app, auth = service_app
    view = upstream("ServiceAppFactory.openapi_spec_view")
    original = json.loads(asyncio.run(view(SimpleNamespace(service=Transfigure), None)).body)
    assert {"file", "null"} <= set(_schema_types(original))  # what we patch against

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/docs.json", headers=auth)

    r = asyncio.run(get())
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.0")
    types = set(_schema_types(spec)) - {None}
    assert types <= {"object", "string", "integer", "number", "boolean", "array"}, types
    image = spec["components"]["schemas"]["translate__Input"]["properties"]["image"]
    assert (image["type"], image["format"]) == ("string", "binary")
    assert set(spec["paths"]) == set(original["paths"])


# -- _overload_answer_says_when_to_retry ---------------------------------------------------------


async def _two_at_once(middleware: Any, path: str) -> list[httpx.Response]:
    """Two requests at once through ``middleware`` (limit 1) around an app that answers after a pause."""
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = MaxConcurrencyMiddleware(slow, max_concurrency=1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await middleware(mw, scope, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = asyncio.create_task(c.post(path))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(c.post(path))
        await asyncio.sleep(0.05)
        release.set()
        return [await first, await second]


def test_bentoml_overload_answer_has_no_retry_after_and_the_patch_adds_it() -> None:
    first, second = asyncio.run(_two_at_once(upstream("MaxConcurrencyMiddleware.__call__"), "/translate"))
    assert first.status_code == 200 and second.status_code == 429
    assert "retry-after" not in second.headers  # what we patch against
    first, second = asyncio.run(_two_at_once(MaxConcurrencyMiddleware.__call__, "/translate"))
    assert first.status_code == 200 and second.status_code == 429
    assert second.headers["retry-after"] == "1" and "TRANSFIGURE_MAX_CONCURRENCY" in second.json()["error"]


def test_bentoml_counts_the_sample_batch_hop_and_the_patch_lets_it_through() -> None:
    statuses = [
        r.status_code
        for r in asyncio.run(_two_at_once(upstream("MaxConcurrencyMiddleware.__call__"), "/sample_batch"))
    ]
    assert statuses == [200, 429]  # what we patch against
    statuses = [
        r.status_code for r in asyncio.run(_two_at_once(MaxConcurrencyMiddleware.__call__, "/sample_batch"))
    ]
    assert statuses == [200, 200]


def test_the_apps_traffic_middleware_is_bentomls_patched_classes(service_app) -> None:
    app, _ = service_app
    classes = [m.cls for m in app.user_middleware]
    assert TimeoutMiddleware in classes and MaxConcurrencyMiddleware in classes


# -- _request_timer_is_cancelled --------------------------------------------------------------------


_SPAN: contextvars.ContextVar[object] = contextvars.ContextVar("span")  # stands in for OpenTelemetry's


async def _requests_left_alive(middleware: Any) -> tuple[list[int], int]:
    """Answer /slow (past the 0.5 s timeout) and /fast through ``middleware``; (statuses, spans alive)."""
    alive: list[weakref.ref] = []

    class Span:
        pass

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    timeout = TimeoutMiddleware(app, timeout=0.5)

    async def traced(scope: Any, receive: Any, send: Any) -> None:  # like OpenTelemetry's, outside
        span = Span()
        alive.append(weakref.ref(span))
        _SPAN.set(span)
        await middleware(timeout, scope, receive, send)

    statuses = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=traced), base_url="http://t") as c:
        for path in ("/slow", "/fast"):  # each request in its own task, hence its own context
            statuses.append((await asyncio.create_task(c.get(path))).status_code)
    await asyncio.sleep(0.05)
    gc.collect()
    return statuses, sum(ref() is not None for ref in alive)


def test_bentoml_request_timer_keeps_a_finished_request_alive_and_the_patch_does_not() -> None:
    assert asyncio.run(_requests_left_alive(upstream("TimeoutMiddleware.__call__"))) == ([504, 200], 1)
    assert asyncio.run(_requests_left_alive(TimeoutMiddleware.__call__)) == ([504, 200], 0)


# -- the self-proxy's token -------------------------------------------------------------------------


def test_bentomls_self_proxy_makes_sessions_from_its_headers_dict_and_the_token_reaches_them() -> None:
    """The batching hop's client keeps ``default_headers`` and a ``SessionManager`` that builds each
    aiohttp session from the dict it was given; ``authorize_self_proxy`` relies on both."""
    import attr
    from _bentoml_impl.client.proxy2 import AsyncClient, SessionManager

    assert "default_headers" in attr.fields_dict(AsyncClient)
    assert "headers" in inspect.signature(SessionManager).parameters

    async def scenario() -> None:
        headers = {"User-Agent": "bentoml"}
        manager = SessionManager("http://127.0.0.1:9", 1.0, headers)
        early = await manager.get_session()  # made before the token is known
        assert "Authorization" not in early.headers
        client = SimpleNamespace(default_headers=headers, _session_manager=manager)
        await bentoml_patches.authorize_self_proxy(client, "s3cret")
        late = await manager.get_session()
        assert early.closed and late is not early
        assert late.headers["Authorization"] == "Bearer s3cret" == client.default_headers["Authorization"]
        await manager.close()

    asyncio.run(scenario())
