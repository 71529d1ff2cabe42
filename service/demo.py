"""The demo page: three hand-written files in ``service/static`` served in front of the API.

``DemoMiddleware`` is plain ASGI, added to the BentoML service *before* ``GuardMiddleware`` so that
it sits outside it: the page loads without the API token (it holds no data and no secrets), while
every API call the page makes still goes through the token check and the body limit. Routes:

* ``GET /`` -> redirect to ``demo/`` (relative, so the page also works behind a path-prefix proxy).
* ``GET /demo`` -> redirect to ``demo/``, so that the page's relative links resolve under it.
* ``GET /demo/`` -> ``index.html``; ``GET /demo/app.js``, ``/demo/app.css`` -> the assets.
* ``GET /docs`` -> BentoML's OpenAPI (Swagger) page, which it serves at ``/`` and which the redirect
  above would hide otherwise.

Only the files named in ``ASSETS`` are ever served (read once, at start-up): no path from a request
touches the file system. Every answer carries a Content-Security-Policy that allows nothing but
this origin, so a page that tried to load an external font, script or image would fail visibly.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bentoml.transfigure.demo")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/demo"
DOCS_PATH = "/docs"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# blob: for the images the page gets from the API (object URLs); nothing from any other origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@dataclass
class DemoConfig:
    """Where the page lives and what it answers; the defaults are what the service uses."""

    static_dir: Path = STATIC_DIR
    prefix: str = PREFIX  # the page is at <prefix>/
    redirect_root: bool = True  # GET / -> the page
    docs_path: str | None = DOCS_PATH  # BentoML's Swagger page moves here (None: leave it at /)
    assets: dict[str, str] = field(default_factory=lambda: dict(ASSETS))


def load_assets(config: DemoConfig) -> dict[str, Asset]:
    """Read the page's files once; a missing one is logged (the page then answers 404 saying so)."""
    out: dict[str, Asset] = {}
    for name, media_type in config.assets.items():
        path = config.static_dir / name
        try:
            body = path.read_bytes()
        except OSError as e:
            log.warning(
                "demo page file %s cannot be read (%s): the page at %s/ is off", path, e, config.prefix
            )
            continue
        out[name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    media_type: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
            ]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


class DemoMiddleware:
    """Serve the demo page and its two assets; everything else goes on to ``app`` untouched."""

    def __init__(self, app: ASGIApp, config: DemoConfig | None = None) -> None:
        self.app = app
        self.config = config or DemoConfig()
        self.assets = load_assets(self.config)
        self.prefix = "/" + self.config.prefix.strip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        read = method in {"GET", "HEAD"}
        if read and (path == self.prefix or (path == "/" and self.config.redirect_root)):
            # relative ("demo/" from "/" and from "/demo" alike), so a proxy's path prefix is kept
            target = self.prefix[1:] if path == "/" else self.prefix.rsplit("/", 1)[-1]
            await _respond(send, 307, b"", "text/plain", [(b"location", f"{target}/".encode())])
            return
        if self.config.docs_path and read and path == self.config.docs_path:
            # BentoML's Swagger page is a route at "/"; its links are relative, so they resolve from here
            await self.app({**scope, "path": "/", "raw_path": b"/"}, receive, send)
            return
        if not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        if not read:
            await _respond(
                send, 405, b"the demo page is read-only: use GET", "text/plain", [(b"allow", b"GET, HEAD")]
            )
            return
        file = path[len(self.prefix) + 1 :] or "index.html"
        asset = self.assets.get(file)
        if asset is None:
            why = (
                f"the demo page is not installed: service/static/{file} is missing "
                "(a Bento needs 'service/static/*' in bentofile.yaml's include)"
                if file in self.config.assets
                else f"no such file in the demo page: {file}"
            )
            await _respond(send, 404, why.encode(), "text/plain; charset=utf-8")
            return
        headers = [(b"etag", asset.etag.encode()), (b"cache-control", b"no-cache")]
        if _header(scope, b"if-none-match") == asset.etag.encode():
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await _respond(send, 200, asset.body, asset.media_type, headers, head=method == "HEAD")
