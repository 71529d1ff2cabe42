"""ASGI middleware in front of the BentoML app: body size limit (413), bearer token, GET /models,
the busy answer (503) and the request's arrival time.

Plain ASGI (no framework) so that it runs before BentoML reads the body: an oversized upload is
refused from its Content-Length, or cut off as soon as the streamed bytes pass the limit, and a
request the server is too busy for is refused before its body is read or parsed. The time the
request's body has been received is stored in the scope under ``ARRIVAL_KEY``
(``time.monotonic()``): a request's queueing time counts from there.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and scrapers must work without the token (Kubernetes and Prometheus do not send one).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
ARRIVAL_KEY = "transfigure.arrival"
# busy(path, scope) -> None to go on (it may note its admission in the scope), or (JSON body,
# Retry-After seconds) for a 503 answered at once; done(scope) when the request has been answered
BusyCheck = Callable[[str, "Scope"], "tuple[Any, int] | None"]


async def _send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": data})


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Reject oversized bodies (413), requests without the bearer token (401) and requests the server
    is too busy for (503); serve GET /models.

    ``models_json`` is called per GET /models request and returns the JSON-able listing; ``busy``
    per POST request, with its path (see ``BusyCheck``).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_token: str | None = None,
        models_json: Callable[[], Any] | None = None,
        busy: BusyCheck | None = None,
        done: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.busy = busy
        self.done = done
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token
        self.models_json = models_json

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_token or scope.get("path", "") in OPEN_PATHS:
            return True
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.api_token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL_KEY] = time.monotonic()
        if not self._authorized(scope):
            await _send_json(
                send,
                401,
                {
                    "error": "missing or wrong bearer token: send 'Authorization: Bearer <TRANSFIGURE_API_TOKEN>'"
                },
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope.get("path") == "/models" and scope.get("method") in {"GET", "HEAD"} and self.models_json:
            await _send_json(send, 200, self.models_json())
            return
        if self.busy is not None and scope.get("method") == "POST":
            refusal = self.busy(scope.get("path", ""), scope)
            if refusal is not None:
                body, retry_after = refusal
                await _send_json(send, 503, body, [(b"retry-after", str(retry_after).encode())])
                return
        try:
            await self._guarded(scope, receive, send)
        finally:
            if self.done is not None:
                self.done(scope)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "invalid Content-Length header"})
                    return
                if declared > limit:
                    await _send_json(
                        send, 413, {"error": f"request body is {declared} bytes; the limit is {limit}"}
                    )
                    return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge()
                if not message.get("more_body", False):
                    scope[ARRIVAL_KEY] = time.monotonic()  # the whole request is here
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # the app's own error answer to the cut-off body is replaced by our 413
                return
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if message.get("status") == 503 and all(k.lower() != b"retry-after" for k, _ in headers):
                    # BentoML's "busy" answers (e.g. a sample batch queued too long) say when to retry
                    message = {**message, "headers": [*headers, (b"retry-after", b"1")]}
            await send(message)

        with contextlib.suppress(_TooLarge):  # raised from limited_receive if the app let it through
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not started:
            await _send_json(send, 413, {"error": f"request body is larger than the limit of {limit} bytes"})
