"""The demo page without a browser: the routes of ``DemoMiddleware`` and checks on the three files.

Fast (no server, no Chromium); the page itself is driven in a real browser by tests/test_demo.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import tomllib
import yaml

from service.demo import ASSETS, CSP, STATIC_DIR, DemoConfig, DemoMiddleware
from service.middleware import GuardMiddleware

REPO = Path(__file__).resolve().parent.parent
HTML = (STATIC_DIR / "index.html").read_text()
JS = (STATIC_DIR / "app.js").read_text()
CSS = (STATIC_DIR / "app.css").read_text()
TASKS = ("translate", "sample", "upscale")


async def _path_app(scope, receive, send) -> None:
    """Stands in for BentoML: answers with the path it was asked for."""
    body = f"{scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _client(config: DemoConfig | None = None) -> httpx.AsyncClient:
    guarded = GuardMiddleware(_path_app, max_body_bytes=1000, api_token="s3cret")
    app = DemoMiddleware(guarded, config)  # the order service.py uses: the page outside the guard
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _run(coro) -> None:
    asyncio.run(coro)


# -- routes --------------------------------------------------------------------------------------


def test_root_and_demo_redirect_to_the_page_without_a_token() -> None:
    async def go() -> None:
        async with _client() as c:
            for path in ("/", "/demo"):
                r = await c.get(path)
                assert r.status_code == 307 and r.headers["location"] == "demo/"
            r = await c.get("/", follow_redirects=True)
            assert r.status_code == 200 and str(r.url) == "http://t/demo/"
            assert r.headers["content-type"].startswith("text/html")
            assert r.text == HTML

    _run(go())


def test_assets_have_types_security_headers_and_etags() -> None:
    async def go() -> None:
        async with _client() as c:
            for name, media_type in ASSETS.items():
                r = await c.get(f"/demo/{name}")
                assert r.status_code == 200, name
                assert r.headers["content-type"] == media_type
                assert r.content == (STATIC_DIR / name).read_bytes()
                assert r.headers["content-security-policy"] == CSP
                assert r.headers["x-content-type-options"] == "nosniff"
                again = await c.get(f"/demo/{name}", headers={"if-none-match": r.headers["etag"]})
                assert again.status_code == 304 and again.content == b""
                head = await c.head(f"/demo/{name}")
                assert head.content == b"" and int(head.headers["content-length"]) == len(r.content)

    _run(go())


def test_the_api_stays_guarded_and_other_paths_pass_through() -> None:
    async def go() -> None:
        async with _client() as c:
            assert (await c.post("/translate")).status_code == 401
            assert (await c.get("/models")).status_code == 401
            r = await c.post("/translate", headers={"Authorization": "Bearer s3cret"})
            assert r.text == "POST /translate"  # not touched by the demo middleware
            assert (await c.get("/livez")).text == "GET /livez"
            # BentoML's Swagger page lives at "/": /docs reaches it (behind the token like before)
            assert (await c.get("/docs")).status_code == 401
            r = await c.get("/docs", headers={"Authorization": "Bearer s3cret"})
            assert r.text == "GET /"

    _run(go())


def test_only_the_listed_files_are_served() -> None:
    source = (REPO / "service" / "demo.py").read_text()

    async def go() -> None:
        async with _client() as c:
            # encoded dots reach the middleware as "../demo.py": never looked up on disk
            for path in (
                "/demo/nope.js",
                "/demo/%2e%2e/demo.py",
                "/demo/%2E%2E%2Fdemo.py",
                "/demo/static/app.js",
            ):
                r = await c.get(path)
                assert r.status_code == 404 and "no such file" in r.text, path
                assert source[:200] not in r.text
            r = await c.post("/demo/", content=b"x")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"

    _run(go())


def test_a_longer_prefix_redirects_relatively() -> None:
    async def go() -> None:
        async with _client(DemoConfig(prefix="/tools/demo")) as c:
            assert (await c.get("/")).headers["location"] == "tools/demo/"
            assert (await c.get("/tools/demo")).headers["location"] == "demo/"
            r = await c.get("/", follow_redirects=True)
            assert str(r.url) == "http://t/tools/demo/" and r.text == HTML

    _run(go())


def test_a_missing_page_says_what_to_fix(tmp_path: Path) -> None:
    async def go() -> None:
        async with _client(DemoConfig(static_dir=tmp_path)) as c:
            r = await c.get("/demo/")
            assert r.status_code == 404 and "static/index.html is missing" in r.text and "bentofile" in r.text
            assert str(tmp_path) not in r.text  # no server paths in answers
            r = await c.post("/translate", headers={"Authorization": "Bearer s3cret"})
            assert r.text == "POST /translate"  # the API is unaffected

    _run(go())


# The service's own app, built as `bentoml serve` builds it, with a token; requests go to it in-process
# (no lifespan: no models are loaded, which the middleware does not need). In a child process: the
# service reads its settings from the environment when imported.
_APP_PROBE = """
import asyncio, json, httpx
from service.service import Transfigure

app = Transfigure.to_asgi(is_main=True)

async def main():
    out = {"middleware": [m.cls.__name__ for m in app.user_middleware]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for path in ("/", "/demo/", "/demo/app.js", "/models", "/docs", "/docs.json"):
            out["GET " + path] = (await c.get(path)).status_code
        out["POST /translate"] = (await c.post("/translate")).status_code
        out["POST /demo/ (over the body limit)"] = (await c.post("/demo/", content=b"x" * 4096)).status_code
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_service_app_serves_the_page_outside_the_guard(tmp_path: Path) -> None:
    """The page loads without the token; the API, /models and BentoML's pages still need it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFIGURE_")}
    env.update(
        TRANSFIGURE_MODELS_DIR=str(tmp_path),  # no models: the middleware does not need any
        TRANSFIGURE_API_TOKEN="s3cret",
        TRANSFIGURE_MAX_BODY_BYTES="1000",
        BENTOML_HOME=str(tmp_path / "bentoml_home"),
        BENTOML_DO_NOT_TRACK="true",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _APP_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    order = out.pop("middleware")
    assert order.index("DemoMiddleware") < order.index("GuardMiddleware")  # the first runs outermost
    assert out == {
        "GET /": 307,
        "GET /demo/": 200,
        "GET /demo/app.js": 200,
        "GET /models": 401,
        "GET /docs": 401,
        "GET /docs.json": 401,
        "POST /translate": 401,
        "POST /demo/ (over the body limit)": 405,  # the page's answer, not the guard's 413
    }


# -- the files -----------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.labels: set[str] = set()
        self.controls: list[tuple[str, dict[str, str | None]]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag == "label" and a.get("for"):
            self.labels.add(a["for"] or "")
        if tag in {"input", "select", "textarea"}:
            self.controls.append((tag, a))


def _page() -> _Page:
    p = _Page()
    p.feed(HTML)
    return p


def test_nothing_is_loaded_from_outside_the_server() -> None:
    for name, text in (("index.html", HTML), ("app.js", JS), ("app.css", CSS)):
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text), name
        assert not re.search(r"url\(\s*[\"']?(?:https?:)?//", text), name
        assert "@import" not in text and "@font-face" not in text, name
        assert not re.search(r"fetch\(\s*[\"'`]https?:", text), name
    for tag, attrs in _page().tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"^[a-z]+:|^//", value), (tag, value)  # relative links only


def test_html_works_under_the_content_security_policy() -> None:
    page = _page()
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts and all(a.get("src") for a in scripts)  # no inline scripts
    assert "<style" not in HTML
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [k for k in attrs if k.startswith("on")], tag  # no inline handlers


def test_ids_are_unique_and_every_control_has_a_label() -> None:
    page = _page()
    assert len(page.ids) == len(set(page.ids))
    for tag, attrs in page.controls:
        assert attrs.get("id") in page.labels, f"<{tag} id={attrs.get('id')}> has no <label for=...>"


def test_every_element_the_script_uses_exists() -> None:
    ids = set(_page().ids)
    literal = set(re.findall(r"(?:\$|showError)\(\"([a-z0-9-]+)\"[),]", JS))
    assert literal and literal <= ids, literal - ids
    # ids built from the task name: $(task + "-model"), $("panel-" + task), ...
    suffixes = set(re.findall(r"(?:\$|showError)\(task \+ \"(-[a-z]+)\"", JS))
    assert {"-model", "-run", "-card", "-error", "-status"} <= suffixes
    for task in TASKS:
        assert {task + s for s in suffixes} <= ids
        assert f"panel-{task}" in ids and f"tab-{task}" in ids


def test_the_script_calls_only_the_public_api() -> None:
    calls = set(re.findall(r"call\(\"(GET|POST)\", \"([a-z_]+)\"", JS))
    assert calls == {("GET", "models"), ("POST", "translate"), ("POST", "sample"), ("POST", "upscale")}
    assert "localStorage" not in JS  # the token lives in sessionStorage only


def test_the_script_parses() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the syntax check of app.js needs it (apt-get install nodejs)")
    r = subprocess.run([node, "--check", str(STATIC_DIR / "app.js")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_page_is_packaged() -> None:
    """Every served file is in the wheel (package data) and in the Bento (bentofile include)."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    include = yaml.safe_load((REPO / "bentofile.yaml").read_text())["include"]
    for name in ASSETS:
        assert any(fnmatch(f"static/{name}", p) for p in package_data["service"]), name
        assert any(fnmatch(f"service/static/{name}", p) for p in include), name
    assert "service/demo.py" in include
