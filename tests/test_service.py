"""The HTTP service: middleware and CLI without a server, then the real `bentoml serve` on tiny models.

The integration server is started ONCE for the module (start-up is slow on 2 cores). It runs with
an API token, a small tile size, a 2 MiB upload limit, a 13-MP budget of pixels in flight and
TRANSFIGURE_STRICT=0 with one broken model in its zoo, so that those paths are exercised by the
same server. Its zoo also holds an untrained GuidedTranslator exported by ``training.export``
(when torch is installed) for requests at 12 MP, and beside the tiny translator (``multiple_of`` 4:
a full-resolution network, bounded by the default TRANSFIGURE_FULLRES_MAX_SIDE of 1024) the same
graph with a card that says ``multiple_of`` 1 (resolution-free: never resized).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from models.card import SCHEMA_VERSION
from service import imaging
from service.admission import PixelBudget, ServerBusy
from service.middleware import GuardMiddleware
from service.serve_cli import add_arguments
from service.serve_cli import run as serve_run
from service.zoo import Zoo
from tests.server_utils import server_timing
from tests.tiny_models import make_guided_model, make_model, make_zoo

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "sr" / "head.png"
TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PIXELS_IN_FLIGHT = 13_000_000  # the test server's budget: one 12-MP photo at a time
HAS_TORCH = importlib.util.find_spec("torch") is not None
TRANSLATE_MODELS = ("guided, " if HAS_TORCH else "") + "tiny-free, tiny-translate"  # the test server's


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.open(FIXTURE).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(w: int, h: int, mode: str = "RGB") -> bytes:
    im = Image.open(FIXTURE).convert("RGB").resize((w, h)).convert(mode)
    if mode == "RGBA":  # a real alpha plane (a fully opaque one may be dropped by encoders)
        im.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


# -- middleware (no server) ----------------------------------------------------------------------


async def _echo_app(scope, receive, send) -> None:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _guarded(**kw) -> httpx.AsyncClient:
    app = GuardMiddleware(_echo_app, **{"max_body_bytes": 100, **kw})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_middleware_body_limit() -> None:
    asyncio.run(_body_limit())


async def _body_limit() -> None:
    async with _guarded() as c:
        assert (await c.post("/translate", content=b"x" * 100)).text == "100"
        r = await c.post("/translate", content=b"x" * 101)
        assert r.status_code == 413 and "limit is 100" in r.json()["error"]

        async def chunks():  # no Content-Length: the streamed count is what trips
            for _ in range(5):
                yield b"x" * 40

        r = await c.post("/translate", content=chunks())
        assert r.status_code == 413 and "limit of 100" in r.json()["error"]


def test_middleware_token_and_open_paths() -> None:
    asyncio.run(_token_and_open_paths())


async def _token_and_open_paths() -> None:
    async with _guarded(api_token="s3cret", models_json=lambda: {"models": []}) as c:
        r = await c.post("/translate", content=b"")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert (await c.post("/translate", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await c.post("/translate", headers={"Authorization": "Bearer s3cret"})).status_code == 200
        for path in ("/livez", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200
        assert (await c.get("/models")).status_code == 401
        assert (await c.get("/models", headers={"Authorization": "Bearer s3cret"})).json() == {"models": []}


def test_sample_batching_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import load_settings

    monkeypatch.setenv("TRANSFIGURE_SAMPLE_BATCHING", "0")
    assert load_settings().sample_batching is False
    monkeypatch.setenv("TRANSFIGURE_SAMPLE_BATCHING", "1")
    assert load_settings().sample_batching is True
    monkeypatch.setenv("TRANSFIGURE_SAMPLE_BATCHING", "maybe")
    with pytest.raises(ValueError, match="TRANSFIGURE_SAMPLE_BATCHING"):
        load_settings()


def test_pixel_budget_admits_a_lone_request_and_refuses_past_the_limit() -> None:
    budget = PixelBudget(10)
    with budget.hold(25):  # alone: always admitted, whatever its size
        assert budget.in_flight == 25
        with pytest.raises(ServerBusy, match="TRANSFIGURE_MAX_PIXELS_IN_FLIGHT") as e, budget.hold(1):
            pass
        assert e.value.status_code == 503
    with budget.hold(6), budget.hold(4):  # up to the limit together
        assert budget.in_flight == 10
        with pytest.raises(ServerBusy, match="retry"), budget.hold(1):
            pass
    assert budget.in_flight == 0  # released, also after a refusal
    with pytest.raises(ValueError):
        PixelBudget(0)


def test_max_side_is_opt_in_and_a_request_cannot_raise_the_servers() -> None:
    from bentoml.exceptions import InvalidArgument

    from service.service import effective_max_side

    assert imaging.Limits().max_side is None  # by default nothing is downscaled
    assert effective_max_side(None, None) is None
    assert effective_max_side(None, 640) == 640
    assert effective_max_side(1024, None) == 1024
    assert effective_max_side(1024, 640) == 640
    assert effective_max_side(256, 1000) == 256
    with pytest.raises(InvalidArgument, match="max_side"):
        effective_max_side(None, 0)


# -- serve CLI (no server) -----------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    return serve_run(p.parse_args(argv))


def test_serve_check_lists_models_and_refuses_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli(["--models-dir", str(tmp_path), "--check"]) == 0
    assert "no models found" in capsys.readouterr().out
    make_zoo(tmp_path, kinds=("translate", "upscale"))
    assert _cli(["--models-dir", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "tiny-translate" in out and "tiny-upscale" in out and "x2" in out
    (tmp_path / "tiny-upscale" / "model.onnx").write_bytes(b"swapped")
    assert _cli(["--models-dir", str(tmp_path), "--check"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "tiny-upscale" / "model.onnx") in err and "refusing to start" in err
    assert _cli(["--models-dir", str(tmp_path), "--check", "--allow-missing"]) == 0


def test_serve_reads_the_settings_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_zoo(tmp_path, kinds=("translate",))
    (tmp_path / "tiny-translate" / "model.onnx").write_bytes(b"swapped")
    monkeypatch.setenv("TRANSFIGURE_STRICT", "0")  # from the environment, as --allow-missing would
    assert _cli(["--models-dir", str(tmp_path), "--check"]) == 0
    monkeypatch.setenv("TRANSFIGURE_TIMEOUT", "soon")
    assert _cli(["--models-dir", str(tmp_path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "transfigure serve: environment variable TRANSFIGURE_TIMEOUT='soon'" in err


@pytest.mark.integration
def test_bentoml_serve_refuses_a_bad_model_naming_the_file(tmp_path: Path) -> None:
    make_zoo(tmp_path, kinds=("translate",))
    bad = tmp_path / "tiny-translate" / "model.onnx"
    bad.write_bytes(bad.read_bytes() + b"\0")
    env = {**os.environ, "TRANSFIGURE_MODELS_DIR": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("TRANSFIGURE_STRICT", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "service.service:Transfigure",
            "--port",
            str(_free_port()),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"{bad}: sha256" in proc.stderr + proc.stdout


# -- the real server -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ARBITERS: dict[str, int] = {}  # server URL -> pid of its `bentoml serve`


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_zoo(tmp_path_factory.mktemp("served_zoo"))
    make_model(root, "translate", "tiny-free", multiple_of=1)  # resolution-free by its card
    make_model(root, "sample", "broken")
    (root / "broken" / "model.onnx").write_bytes(b"not onnx")
    if HAS_TORCH:
        make_guided_model(root, "guided")
    return root


@pytest.fixture
def guided(zoo_root: Path) -> str:
    if not (zoo_root / "guided").is_dir():
        pytest.skip("exporting a GuidedTranslator needs torch (the train extra)")
    return "guided"


@pytest.fixture(scope="module")
def server(zoo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRANSFIGURE_")},
        "TRANSFIGURE_MODELS_DIR": str(zoo_root),
        "TRANSFIGURE_STRICT": "0",
        "TRANSFIGURE_API_TOKEN": TOKEN,
        "TRANSFIGURE_TILE": "16",
        "TRANSFIGURE_MAX_BYTES": str(2 * 1024 * 1024),
        "TRANSFIGURE_MAX_PIXELS_IN_FLIGHT": str(PIXELS_IN_FLIGHT),
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml_home")),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    log = (tmp_path_factory.mktemp("log") / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "service.service:Transfigure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    _ARBITERS[url] = proc.pid
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after 90 s; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        yield c


def _post(http: httpx.Client, route: str, files: dict | None = None, **data) -> httpx.Response:
    return http.post(route, files=files, data={k: str(v) for k, v in data.items()} or None)


def _error(r: httpx.Response) -> str:
    body = r.json()
    return (body[0] if isinstance(body, list) else body)["error"]


@pytest.mark.integration
def test_health_metrics_docs(server: str, http: httpx.Client) -> None:
    assert httpx.get(f"{server}/livez").status_code == 200  # open without the token
    assert httpx.get(f"{server}/readyz").status_code == 200
    assert "bentoml_service" in httpx.get(f"{server}/metrics").text
    assert httpx.post(f"{server}/models").status_code == 401
    spec = http.get("/docs.json").json()
    assert {"/translate", "/sample", "/upscale", "/models"} <= set(spec["paths"])


@pytest.mark.integration
def test_models_lists_cards_and_unavailable(http: httpx.Client) -> None:
    listing = http.get("/models").json()
    names = ["guided"] * HAS_TORCH + ["tiny-free", "tiny-sample", "tiny-translate", "tiny-upscale"]
    assert [m["name"] for m in listing["models"]] == names
    assert all(m["available"] for m in listing["models"])
    # where each model runs (TRANSFIGURE_PROVIDERS=auto without CUDA: the CPU) and which file
    assert all(m["provider"] == "cpu" and m["served_file"] == m["onnx_file"] for m in listing["models"])
    by_name = {m["name"]: m for m in listing["models"]}
    assert (
        by_name["tiny-translate"]["schema_version"] == SCHEMA_VERSION
        and by_name["tiny-translate"]["parity"] is None
    )
    if HAS_TORCH:  # an exported card: its typed export records pass through as the card has them
        assert by_name["guided"]["parity"]["exporter"] in {"dynamo", "torchscript"}
        assert by_name["guided"]["parity"]["cases"] and by_name["guided"]["int8_gate"] is None
    assert "broken" in listing["unavailable"]
    assert str(Path.cwd()) not in json.dumps(listing["unavailable"])  # no server paths
    assert http.post("/models", json={}).json() == listing
    r = _post(http, "/sample", model="broken")
    assert r.status_code == 400 and "unavailable" in _error(r)


@pytest.mark.integration
def test_translate_with_sync_client(server: str, tmp_path: Path) -> None:
    import bentoml

    src = tmp_path / "in.png"
    src.write_bytes(_png(45, 31))
    with bentoml.SyncHTTPClient(server, token=TOKEN, timeout=30) as client:
        out = client.translate(image=src, model="tiny-translate")
    got = np.asarray(Image.open(out))
    want = 255 - np.asarray(Image.open(src)).astype(int)
    assert got.shape == (31, 45, 3) and np.abs(got - want).max() <= 1


@pytest.mark.integration
def test_translate_options_and_alpha(http: httpx.Client) -> None:
    r = _post(
        http, "/translate", {"image": ("a.png", _png(64, 32, "RGBA"))}, model="tiny-translate", format="webp"
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    out = Image.open(io.BytesIO(r.content))
    assert out.mode == "RGBA" and np.asarray(out)[:, :, 3].min() < 10  # alpha carried through
    # where the time went, as a W3C Server-Timing header: every stage, in order, in ms of this request
    stages = server_timing(r.headers["server-timing"])
    assert list(stages) == ["decode", "queue", "infer", "encode"]
    assert 0 <= sum(stages.values()) <= r.elapsed.total_seconds() * 1000
    r = _post(
        http,
        "/translate",
        {"image": ("a.png", _png(64, 32))},
        model="tiny-translate",
        max_side=16,
        format="jpeg",
    )
    assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).size == (16, 8)
    # no downscale unless asked for: the answer has the input's own size
    data = _png(1500, 700)
    r = _post(http, "/translate", {"image": ("a.png", data)}, model="tiny-free")
    got = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    want = 255 - np.asarray(Image.open(io.BytesIO(data))).astype(int)
    assert got.shape == (700, 1500, 3) and np.abs(got - want).max() <= 1
    assert "x-transfigure-processed-size" not in r.headers
    stages = server_timing(r.headers["server-timing"])  # a 1-MP image takes time in each stage
    assert min(stages["decode"], stages["infer"], stages["encode"]) > 0.05, stages
    assert sum(stages.values()) <= r.elapsed.total_seconds() * 1000
    r = _post(http, "/translate", {"image": ("a.png", data)}, model="tiny-free", max_side=1000)
    assert Image.open(io.BytesIO(r.content)).size == (1000, 467)  # the opt-in downscale


@pytest.mark.integration
def test_a_full_resolution_network_runs_bounded_and_the_answer_says_so(
    http: httpx.Client, zoo_root: Path
) -> None:
    data = _jpeg(2000, 1500)
    src = imaging.decode_image(data, imaging.Limits())
    inverted = 255 - src.rgb.astype(int)
    model = Zoo.load(zoo_root, names=["tiny-translate"], threads=1).get("tiny-translate")

    def translate(name: str, **fields: object) -> tuple[np.ndarray, str | None]:
        r = _post(http, "/translate", {"image": ("photo.jpg", data)}, model=name, **fields)
        assert r.status_code == 200, r.text
        assert r.headers["x-model"] == name
        out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
        return out, r.headers.get("x-transfigure-processed-size")

    # multiple_of 4: run on a 1024 x 768 copy, answered at the input's size, and the header says so
    got, processed = translate("tiny-translate")
    assert got.shape == (1500, 2000, 3) and processed == "1024x768"
    np.testing.assert_array_equal(got, imaging.translate_image(model, src, 1024).rgb)  # one path
    assert 0 < np.abs(got - inverted).mean() < 3  # the inversion, through the smaller copy
    # resolution-free (multiple_of 1): the photo itself, no header
    got, processed = translate("tiny-free")
    assert got.shape == (1500, 2000, 3) and processed is None
    assert np.abs(got - inverted).max() <= 1
    # max_side still lowers first, for either model; the bound applies to what is left
    for name in ("tiny-translate", "tiny-free"):
        got, processed = translate(name, max_side=1000)
        assert got.shape == (750, 1000, 3) and processed is None
    got, processed = translate("tiny-translate", max_side=1600)
    assert got.shape == (1200, 1600, 3) and processed == "1024x768"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("accept", "format", "media_type"),
    [
        ("image/jpeg", None, "image/jpeg"),
        ("image/webp", None, "image/webp"),
        ("image/webp,image/apng,*/*;q=0.8", None, "image/webp"),  # a browser's image Accept
        ("image/jpeg;q=0.5, image/webp", None, "image/webp"),
        ("*/*", None, "image/png"),
        (None, None, "image/png"),
        ("image/avif", None, "image/png"),  # a format not served here: the default
        ("text/html", None, "image/png"),
        ("image/jpeg", "png", "image/png"),  # the form field wins
        ("image/webp", "jpeg", "image/jpeg"),
    ],
)
def test_the_answer_format_follows_accept_unless_the_form_says(
    server: str, accept: str | None, format: str | None, media_type: str
) -> None:
    headers = dict(AUTH)
    if accept is not None:
        headers["Accept"] = accept
    fields = {"model": "tiny-translate", **({"format": format} if format else {})}
    with httpx.Client(base_url=server, headers=headers, timeout=30) as c:
        if accept is None:
            c.headers.pop("accept", None)  # httpx sends */* unless told not to
        r = c.post("/translate", files={"image": ("a.png", _png(40, 30))}, data=fields)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    assert "accept" in r.headers["vary"].lower()
    out = Image.open(io.BytesIO(r.content))
    assert Image.MIME[out.format] == media_type and out.size == (40, 30)


@pytest.mark.integration
def test_upscale_answers_in_the_accepted_format(http: httpx.Client) -> None:
    files = {"image": ("a.png", _png(24, 20))}
    r = http.post("/upscale", files=files, data={"model": "tiny-upscale"}, headers={"Accept": "image/webp"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).size == (48, 40)
    r = http.post(
        "/upscale",
        files=files,
        data={"model": "tiny-upscale", "format": "png"},
        headers={"Accept": "image/jpeg"},
    )
    assert r.headers["content-type"] == "image/png"


@pytest.mark.integration
def test_a_12_megapixel_photo_is_translated_at_its_own_size(http: httpx.Client, guided: str) -> None:
    data = _jpeg(4000, 3000)
    assert len(data) < 2 * 1024 * 1024  # the test server's upload limit
    r = _post(http, "/translate", {"image": ("photo.jpg", data)}, model=guided, format="jpeg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert out.shape == (3000, 4000, 3)
    assert "x-transfigure-processed-size" not in r.headers  # resolution-free: run at 12 MP
    change = np.abs(out - src).mean()
    assert 0.5 < change < 40, change  # translated (a perturbed translator), not replaced
    stages = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert list(stages) == ["decode", "queue", "infer", "encode"]


def _worker(server_url: str) -> psutil.Process:
    """The server's HTTP worker (the process that loads the models), below its ``bentoml serve``."""
    children = psutil.Process(_ARBITERS[server_url]).children(recursive=True)
    workers = [
        p for p in children if "serve_http" in " ".join(p.cmdline()) or "worker" in " ".join(p.cmdline())
    ]
    assert len(workers) == 1, [p.cmdline() for p in children]
    return workers[0]


def _peak_rss_mib(proc: psutil.Process) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.integration
def test_concurrent_12_megapixel_requests_beyond_the_pixel_budget_get_503(server: str, guided: str) -> None:
    """8 photos of 12 MP at once against a 13-MP budget: some are served, the rest refused (503 with
    Retry-After and a message naming the setting), memory stays bounded and the worker lives."""
    data = _jpeg(4000, 3000)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=server, headers=AUTH, timeout=120) as c:
            return c.post(
                "/translate", files={"image": ("p.jpg", data)}, data={"model": guided, "format": "jpeg"}
            )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503}, [(r.status_code, r.text[:200]) for r in answers]
    assert 200 in statuses and 503 in statuses, statuses
    for busy in (r for r in answers if r.status_code == 503):
        # refused by the pixel budget, or (once the model's time is known) by the expected wait
        assert int(busy.headers["retry-after"]) >= 1
        reason = busy.json()["reason"]
        setting = {"pixel_budget": "MAX_PIXELS_IN_FLIGHT", "expected_wait": "MAX_QUEUE_MS"}[reason]
        assert f"TRANSFIGURE_{setting}" in _error(busy)
    assert all(
        Image.open(io.BytesIO(r.content)).size == (4000, 3000) for r in answers if r.status_code == 200
    )
    assert httpx.get(f"{server}/livez").status_code == 200
    # one 12-MP photo at a time: the worker's peak RSS (measured 1.2 GiB) is that of one request,
    # not of eight (~0.2 GiB idle + ~1 GiB for each 12-MP inference)
    assert _peak_rss_mib(_worker(server)) < 1800


@pytest.mark.integration
def test_upscale_is_tiled_and_exact_size(http: httpx.Client, zoo_root: Path) -> None:
    data = _png(50, 40)
    r = _post(http, "/upscale", {"image": ("a.png", data)}, model="tiny-upscale")
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    assert got.shape == (80, 100, 3)
    model = Zoo.load(zoo_root, names=["tiny-upscale"], threads=1).get("tiny-upscale")
    whole = imaging.upscale_image(model, imaging.decode_image(data, imaging.Limits()), tile=0)
    assert np.abs(got - whole.rgb.astype(int)).max() <= 1  # server tiles by 16 px, no seams


@pytest.mark.integration
def test_sample_grid_json_and_seed(http: httpx.Client) -> None:
    a = _post(http, "/sample", model="tiny-sample", label="cat", n=4, seed=11)
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.headers["x-seed"] == "11" and a.headers["x-label"] == "cat"
    assert Image.open(io.BytesIO(a.content)).size == (2 * 10 + 2, 2 * 10 + 2)  # 2x2 grid of 8 px + pad 2
    b = _post(http, "/sample", model="tiny-sample", label=1, n=4, seed=11)
    assert b.content == a.content  # label by index == by name; same seed -> same bytes
    c = _post(http, "/sample", model="tiny-sample", label="cat", n=4, seed=12)
    assert c.content != a.content
    j = http.post("/sample", json={"model": "tiny-sample", "label": "fish", "n": 3, "seed": 5, "grid": False})
    body = j.json()
    assert body["seed"] == 5 and body["label"] == "fish" and len(body["images"]) == 3
    first = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert first.size == (8, 8)
    unseeded = _post(http, "/sample", model="tiny-sample", n=1)
    assert unseeded.status_code == 200 and unseeded.headers["x-seed"].isdigit()


def _sample_batches(server: str) -> tuple[float, float]:
    """(samples, batches) that went through the /sample_batch batcher, from /metrics."""
    text = httpx.get(f"{server}/metrics").text
    vals = {}
    for suffix in ("sum", "count"):
        m = re.search(
            rf'adaptive_batch_size_{suffix}{{[^}}]*method_name="sample_batch"[^}}]*}} ([0-9.e+]+)', text
        )
        vals[suffix] = float(m.group(1)) if m else 0.0
    return vals["sum"], vals["count"]


@pytest.mark.integration
def test_concurrent_samples_are_batched(server: str, http: httpx.Client) -> None:
    def metric() -> tuple[float, float]:
        return _sample_batches(server)

    s0, c0 = metric()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: _post(http, "/sample", model="tiny-sample", n=8, seed=i), range(48))
        )
    assert all(r.status_code == 200 for r in results)
    # each request's bytes depend only on its seed, whatever it was batched with
    assert results[3].content == _post(http, "/sample", model="tiny-sample", n=8, seed=3).content
    s1, c1 = metric()
    # most requests went through the batcher (one that finds no other /sample in flight runs
    # directly; measured 45 of 49)...
    assert s1 - s0 >= 24
    assert c1 - c0 < s1 - s0  # ...and some batches held more than one request
    # a request alone in the server skips the batcher's HTTP hop: nothing to batch it with
    for seed in range(3):
        assert _post(http, "/sample", model="tiny-sample", n=8, seed=seed).content == results[seed].content
    assert metric() == (s1, c1)


@pytest.mark.integration
def test_with_sample_batching_off_concurrent_samples_run_directly(tmp_path: Path) -> None:
    """TRANSFIGURE_SAMPLE_BATCHING=0: /sample never takes the batcher's hop, even with others in flight."""
    from tests.server_utils import AUTH as SERVER_AUTH
    from tests.server_utils import TOKEN as SERVER_TOKEN
    from tests.server_utils import start_server

    zoo = make_zoo(tmp_path / "zoo", kinds=("sample",))
    with (
        start_server(
            zoo, tmp_path / "server", TRANSFIGURE_API_TOKEN=SERVER_TOKEN, TRANSFIGURE_SAMPLE_BATCHING="0"
        ) as server,
        httpx.Client(base_url=server.url, headers=SERVER_AUTH, timeout=60) as client,
    ):
        with ThreadPoolExecutor(16) as pool:
            results = list(
                pool.map(lambda i: _post(client, "/sample", model="tiny-sample", n=8, seed=i), range(48))
            )
        assert [r.status_code for r in results] == [200] * 48
        assert results[5].content == _post(client, "/sample", model="tiny-sample", n=8, seed=5).content
        assert _sample_batches(server.url) == (0.0, 0.0)  # with batching on, most go through it


# -- bad input: always a 4xx with a message, and the server stays alive ----------------------------


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    return buf.getvalue()


def _truncated(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.open(FIXTURE).convert("RGB").resize((64, 64)).save(buf, fmt)
    return buf.getvalue()[:700]


def _gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


BAD_IMAGES = {
    "zero bytes": (b"", 400, "empty"),
    "text": (b"hello world\n" * 20, 400, "not an image"),
    "truncated png": (_truncated("PNG"), 400, "truncated or corrupt|not an image"),
    "truncated jpeg": (_truncated("JPEG"), 400, "truncated or corrupt|not an image"),
    "bomb": (_bomb(), 413, "limit is 40.0 MP"),
    "20000x1": (_png(20000, 1), 400, "aspect ratio"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_4xx(server: str, http: httpx.Client, case: str) -> None:
    data, status, message = BAD_IMAGES[case]
    for route, model in (("/translate", "tiny-translate"), ("/upscale", "tiny-upscale")):
        r = _post(http, route, {"image": ("x.png", data)}, model=model)
        assert r.status_code == status, (route, r.text)
        assert re.search(message, _error(r)), r.text
    assert httpx.get(f"{server}/livez").status_code == 200


@pytest.mark.integration
def test_odd_but_valid_images_are_served(http: httpx.Client) -> None:
    r = _post(http, "/translate", {"image": ("x.png", _png(1, 1))}, model="tiny-translate")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (1, 1)
    r = _post(http, "/translate", {"image": ("x.gif", _gif())}, model="tiny-translate")
    assert r.status_code == 200
    assert tuple(np.asarray(Image.open(io.BytesIO(r.content)))[8, 8]) == (0, 255, 255)  # inverted 1st frame
    r = _post(http, "/translate", {"image": ("x.png", _png(40, 30, "I;16"))}, model="tiny-translate")
    assert r.status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize(
    ("route", "fields", "message"),
    [
        ("/translate", {"model": "nope"}, f"unknown model 'nope': available: {TRANSLATE_MODELS}"),
        (
            "/translate",
            {"model": "tiny-sample"},
            f"is a 'sample' model; /translate needs one of: {TRANSLATE_MODELS}",
        ),
        ("/upscale", {"model": "tiny-translate"}, "/upscale needs one of: tiny-upscale"),
        ("/translate", {"model": "tiny-translate", "format": "bmp"}, "use one of png, jpeg, webp"),
        ("/translate", {"model": "tiny-translate", "max_side": "0"}, "max_side"),
        ("/translate", {"model": "tiny-translate", "max_side": "big"}, "validation error"),
        ("/sample", {"model": "tiny-sample", "label": "dog"}, "unknown label 'dog'"),
        ("/sample", {"model": "tiny-sample", "label": "7"}, "out of range"),
        ("/sample", {"model": "tiny-sample", "n": "0"}, "between 1 and 64"),
        ("/sample", {"model": "tiny-sample", "n": "65"}, "between 1 and 64"),
        ("/sample", {"model": "tiny-sample", "n": "many"}, "validation error"),
        ("/sample", {"model": "tiny-sample", "seed": "-1"}, "seed"),
        ("/sample", {"model": "tiny-translate"}, "/sample needs one of: tiny-sample"),
    ],
)
def test_bad_parameters_are_400(
    server: str, http: httpx.Client, route: str, fields: dict, message: str
) -> None:
    files = {"image": ("x.png", _png(8, 8))} if route != "/sample" else None
    r = _post(http, route, files, **fields)
    assert r.status_code == 400, r.text
    assert message in _error(r)
    assert httpx.get(f"{server}/livez").status_code == 200


@pytest.mark.integration
def test_missing_image_and_oversized_body(server: str, http: httpx.Client) -> None:
    r = _post(http, "/translate", None, model="tiny-translate")
    assert r.status_code == 400
    r = _post(http, "/translate", {"image": ("x.png", b"\0" * (4 * 1024 * 1024))}, model="tiny-translate")
    assert r.status_code == 413 and "limit" in _error(r)
    r = httpx.post(f"{server}/translate", files={"image": ("x.png", _png(8, 8))})
    assert r.status_code == 401
    assert httpx.get(f"{server}/livez").status_code == 200


@pytest.mark.integration
def test_a_url_in_the_image_field_is_never_fetched(server: str, http: httpx.Client) -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(_png(8, 8))

        def log_message(self, *args) -> None:
            pass

    spy = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=spy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{spy.server_port}/cat.png"
        r = _post(http, "/translate", None, image=url, model="tiny-translate")
        assert r.status_code == 400 and "URLs" in _error(r)
        r = http.post("/translate", json={"image": url, "model": "tiny-translate"})
        assert r.status_code == 400
        r = http.post("/translate", content=url.encode(), headers={"content-type": "text/plain"})
        assert r.status_code == 400
    finally:
        spy.shutdown()
    assert hits == []


# -- the Bento -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_bento_builds_without_torch(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("TRANSFIGURE_MODELS_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(REPO)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bento,) = [p for p in (tmp_path / "bentos" / "transfigure").iterdir() if p.name != "latest"]
    src = {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*") if p.is_file()}
    assert {
        "service/service.py",
        "service/zoo.py",
        "service/imaging.py",
        "service/admission.py",
        "service/bentoml_patches.py",
        "service/demo.py",
        "service/static/index.html",
        "service/static/app.js",
        "service/static/app.css",
        "service/png.py",
        "models/card.py",
    } <= src
    assert not any(s.startswith(("training/", "tests/")) for s in src)
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs
