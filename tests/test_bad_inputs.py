"""A corpus of bad inputs, generated here (no binary blobs), against the real server.

Every case must get its expected status with a JSON ``error`` that says what was wrong (never a
5xx, a traceback or a server path), the server must keep answering /livez, and its memory must stay
bounded: decompression bombs and images that *declare* huge sizes are refused from their headers.

The image cases go to both /translate and /upscale; request-level cases (a JSON body where
multipart is expected, two files for one field, a 0-byte part, long / unicode / NaN fields, deeply
nested JSON, ...) go where they fit. ``pytest tests/test_bad_inputs.py -s`` prints the tally.
"""

from __future__ import annotations

import io
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_utils import AUTH, TOKEN, Server, error_message, leaks, start_server
from tests.tiny_models import make_zoo

pytestmark = pytest.mark.integration

MAX_BYTES = 1024 * 1024
MAX_PIXELS = 4_000_000
RSS_HEADROOM = 300 * 1024 * 1024  # a worker may grow this much above its idle size, no more


# -- building bad files -----------------------------------------------------------------------------


def _image(fmt: str, w: int = 24, h: int = 16, mode: str = "RGB", **save: Any) -> bytes:
    rng = np.random.default_rng(w * 1000 + h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_declaring(w: int, h: int, bad_crc: bool = False, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares w x h (8-bit RGB), with ``idat`` as its only (short) image data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    crc = 0 if bad_crc else None
    body = _chunk(b"IHDR", ihdr, crc) + _chunk(b"IDAT", zlib.compress(idat or b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def _jpeg_declaring(w: int, h: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is rewritten to declare w x h."""
    data = bytearray(_image("JPEG", 16, 16))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    return bytes(data)


def _bmp_declaring(w: int, h: int) -> bytes:
    data = bytearray(_image("BMP", 8, 8))
    struct.pack_into("<ii", data, 18, w, h)
    return bytes(data)


def _tiff_declaring(w: int, h: int) -> bytes:
    """A TIFF whose ImageWidth / ImageLength tags (the first two of IFD 0) declare w x h."""
    data = bytearray(_image("TIFF", 8, 8))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = w if tag == 256 else h
            if kind == 3:  # SHORT
                struct.pack_into("<I", data, entry + 4, 1)
                struct.pack_into("<HH", data, entry + 8, min(value, 65535), 0)
            else:
                struct.pack_into("<II", data, entry + 4, 1, value)
    return bytes(data)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")  # 64 MP in ~8 kB
    return buf.getvalue()


def _gif_bad_second_frame() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    return data[: len(data) - 30]  # the last frame is cut short


def _exif_garbage() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (9, 9, 9)).save(
        buf, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 40
    )
    return buf.getvalue()


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "ICO")
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><image href="http://127.0.0.1:1/x.png"/></svg>'


@dataclass(frozen=True)
class ImageCase:
    data: Callable[[], bytes]
    status: int
    message: str  # a regex the error must match (ignored for 200)


# status 200: an odd but valid image, which must simply work
IMAGE_CASES: dict[str, ImageCase] = {
    "zero bytes": ImageCase(lambda: b"", 400, "empty"),
    "text": ImageCase(lambda: b"hello world\n" * 20, 400, "not an image"),
    "random bytes": ImageCase(lambda: np.random.default_rng(1).bytes(3000), 400, "not an image"),
    "svg with a url": ImageCase(lambda: SVG, 400, "not an image"),
    "eps (ghostscript)": ImageCase(lambda: EPS, 400, "not an image"),
    "ico": ImageCase(_ico, 400, "not an image"),
    "png signature only": ImageCase(lambda: b"\x89PNG\r\n\x1a\n", 400, "not an image|truncated"),
    "png declaring 65535x65535": ImageCase(lambda: _png_declaring(65535, 65535), 413, "limit is 4.0 MP"),
    "png declaring 2^31 wide": ImageCase(lambda: _png_declaring(2**31 - 1, 1), 4, "limit|not an image"),
    "png declaring 0x0": ImageCase(lambda: _png_declaring(0, 0), 400, "not an image|at least"),
    "png with a bad IHDR crc": ImageCase(
        lambda: _png_declaring(16, 16, bad_crc=True), 400, "not an image|corrupt"
    ),
    "png with too little data": ImageCase(lambda: _png_declaring(300, 300), 400, "truncated or corrupt"),
    "png truncated": ImageCase(lambda: _image("PNG", 64, 64)[:300], 400, "truncated or corrupt|not an image"),
    "png bomb (64 MP, 8 kB)": ImageCase(_bomb, 413, "limit is 4.0 MP"),
    "png 20000x1": ImageCase(lambda: _image("PNG", 20000, 1), 400, "aspect ratio"),
    "jpeg declaring 65500x65500": ImageCase(lambda: _jpeg_declaring(65500, 65500), 413, "limit is 4.0 MP"),
    "jpeg declaring 0x0": ImageCase(lambda: _jpeg_declaring(0, 0), 400, "not an image|at least|corrupt"),
    "jpeg soi+eoi only": ImageCase(lambda: b"\xff\xd8\xff\xd9", 400, "not an image|truncated"),
    "jpeg truncated": ImageCase(
        lambda: _image("JPEG", 64, 64)[:400], 400, "truncated or corrupt|not an image"
    ),
    "jpeg with garbage exif": ImageCase(_exif_garbage, 200, ""),
    "tiff": ImageCase(lambda: _image("TIFF"), 200, ""),
    "tiff declaring 60000x60000": ImageCase(lambda: _tiff_declaring(60000, 60000), 413, "limit is 4.0 MP"),
    "tiff truncated": ImageCase(
        lambda: _image("TIFF", 64, 64)[:500], 400, "truncated or corrupt|not an image"
    ),
    "bmp": ImageCase(lambda: _image("BMP"), 200, ""),
    "bmp declaring 50000x50000": ImageCase(lambda: _bmp_declaring(50000, 50000), 413, "limit is 4.0 MP"),
    "bmp declaring a negative width": ImageCase(
        lambda: _bmp_declaring(-8, 8), 4, "limit|not an image|corrupt"
    ),
    "webp": ImageCase(lambda: _image("WEBP", mode="RGBA"), 200, ""),
    "webp truncated": ImageCase(
        lambda: _image("WEBP", 64, 64)[:200], 400, "truncated or corrupt|not an image"
    ),
    "gif with a cut last frame": ImageCase(_gif_bad_second_frame, 200, ""),
    "png 16-bit grey": ImageCase(lambda: _image("PNG", 30, 20, "I;16"), 200, ""),
    "over the upload limit": ImageCase(lambda: b"\0" * (MAX_BYTES + 10), 413, "limit is"),
}


# -- the server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = make_zoo(tmp_path_factory.mktemp("bad_inputs_zoo"))
    with start_server(
        root,
        tmp_path_factory.mktemp("bad_inputs_server"),
        TRANSFIGURE_API_TOKEN=TOKEN,
        TRANSFIGURE_MAX_BYTES=str(MAX_BYTES),
        TRANSFIGURE_MAX_PIXELS=str(MAX_PIXELS),
        TRANSFIGURE_TILE="16",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def idle_rss(server: Server, http: httpx.Client) -> int:
    for route, model in (("/translate", "tiny-translate"), ("/upscale", "tiny-upscale")):
        http.post(route, files={"image": ("x.png", _image("PNG"))}, data={"model": model})
    return server.rss_bytes()


def _assert_refused(r: httpx.Response, status: int, message: str, what: str) -> None:
    where = f"{what}: {r.status_code} {r.text[:300]}"
    if status == 4:  # any 4xx
        assert 400 <= r.status_code < 500, where
    else:
        assert r.status_code == status, where
    assert r.headers.get("content-type", "").startswith("application/json"), where
    assert re.search(message, error_message(r)), where
    assert not leaks(r.text), (leaks(r.text), where)


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image(server: Server, http: httpx.Client, idle_rss: int, case: str) -> None:
    c = IMAGE_CASES[case]
    data = c.data()
    for route, model in (("/translate", "tiny-translate"), ("/upscale", "tiny-upscale")):
        r = http.post(route, files={"image": ("x.img", data)}, data={"model": model})
        if c.status == 200:
            assert r.status_code == 200, f"{case} {route}: {r.status_code} {r.text[:300]}"
            assert r.headers["content-type"].startswith("image/")
        else:
            _assert_refused(r, c.status, c.message, f"{case} {route}")
    assert server.alive()
    assert server.rss_bytes() < idle_rss + RSS_HEADROOM, f"{case}: server memory grew past the headroom"


# -- request-level cases ----------------------------------------------------------------------------


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict]:
    """A hand-made multipart body: (field, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"content-type": f"multipart/form-data; boundary={boundary}"}


PNG = _image("PNG", 12, 8)
LONG = "m" * 20_000
NESTED = b"[" * 50_000 + b"]" * 50_000


def _requests() -> dict[str, tuple[str, dict[str, Any], int, str]]:
    """name -> (route, httpx.request kwargs, status, message regex)."""
    two_files, two_headers = _multipart([("image", "a.png", PNG), ("image", "b.png", PNG)])
    empty_part, empty_headers = _multipart([("image", "a.png", b""), ("model", None, b"tiny-translate")])
    no_boundary = {"content-type": "multipart/form-data"}
    fields = {"model": "tiny-translate"}
    img = {"image": ("a.png", PNG)}
    return {
        "json body for an image endpoint": (
            "/translate",
            {"json": {"image": "iVBORw0KGgo=", "model": "tiny-translate"}},
            400,
            "validation|file upload",
        ),
        "text/plain body": (
            "/translate",
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            400,
            ".",
        ),
        "no content-type": ("/upscale", {"content": PNG}, 400, "."),
        "multipart without a boundary": (
            "/translate",
            {"content": b"--x--", "headers": no_boundary},
            400,
            ".",
        ),
        "malformed multipart": (
            "/translate",
            {
                "content": b"--b\r\nnonsense[]\r\n\r\n--b--",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "malformed",
        ),
        "two files for one field": (
            "/translate",
            {"content": two_files, "headers": two_headers},
            400,
            "'image' was sent 2 times",
        ),
        "a 0-byte file part": ("/translate", {"content": empty_part, "headers": empty_headers}, 400, "empty"),
        "a 300-character file name": (
            "/translate",
            {"files": {"image": ("x" * 300 + ".png", PNG)}, "data": fields},
            200,
            "",
        ),
        "no image field": ("/translate", {"data": fields}, 400, "validation"),
        "a 20,000-character model name": (
            "/translate",
            {"files": img, "data": {"model": LONG}},
            400,
            "unknown model",
        ),
        "a 20,000-character file name": (
            "/translate",
            {"files": {"image": (LONG + ".png", PNG)}, "data": fields},
            400,
            "malformed",
        ),
        "a 1,000-character file name": (
            "/translate",
            {"files": {"image": ("n" * 1000 + ".png", PNG)}, "data": fields},
            200,
            "",
        ),
        "a path as file name": (
            "/translate",
            {"files": {"image": ("../../../etc/passwd", PNG)}, "data": fields},
            200,
            "",
        ),
        "unicode model name": (
            "/translate",
            {"files": img, "data": {"model": "模型\u202e\u0000x"}},
            400,
            "unknown model",
        ),
        "unicode format": (
            "/translate",
            {"files": img, "data": {**fields, "format": "ｐｎｇ"}},
            400,
            "format",
        ),
        "max_side negative": (
            "/translate",
            {"files": img, "data": {**fields, "max_side": "-5"}},
            400,
            "max_side",
        ),
        "max_side NaN": (
            "/translate",
            {"files": img, "data": {**fields, "max_side": "NaN"}},
            400,
            "validation",
        ),
        "max_side 1e400": (
            "/translate",
            {"files": img, "data": {**fields, "max_side": "1e400"}},
            400,
            "validation",
        ),
        "sample n negative": ("/sample", {"json": {"model": "tiny-sample", "n": -3}}, 400, "between"),
        "sample n NaN": (
            "/sample",
            {
                "content": b'{"model": "tiny-sample", "n": NaN}',
                "headers": {"content-type": "application/json"},
            },
            400,
            ".",
        ),
        "sample n 10^30": ("/sample", {"json": {"model": "tiny-sample", "n": 10**30}}, 400, "between"),
        "sample n 2.5": ("/sample", {"json": {"model": "tiny-sample", "n": 2.5}}, 400, "validation"),
        "sample seed 2^64": ("/sample", {"json": {"model": "tiny-sample", "seed": 2**64}}, 400, "seed"),
        "sample label -1": ("/sample", {"json": {"model": "tiny-sample", "label": -1}}, 400, "label|range"),
        "sample label 1e9": (
            "/sample",
            {"json": {"model": "tiny-sample", "label": 10**9}},
            400,
            "label|range",
        ),
        "sample label long unicode": (
            "/sample",
            {"json": {"model": "tiny-sample", "label": "猫" * 5000}},
            400,
            "label",
        ),
        "sample grid 'maybe'": (
            "/sample",
            {"json": {"model": "tiny-sample", "grid": "maybe"}},
            400,
            "validation",
        ),
        "json that is not an object": ("/sample", {"json": [1, 2, 3]}, 400, "."),
        "json deeply nested": (
            "/sample",
            {"content": NESTED, "headers": {"content-type": "application/json"}},
            400,
            ".",
        ),
        "json invalid utf-8": (
            "/sample",
            {"content": b'{"model": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
            400,
            ".",
        ),
        "sample_batch wrong shape": ("/sample_batch", {"json": {"rows": [[1.0, 2.0]]}}, 400, "validation"),
        "sample_batch scalar rows": ("/sample_batch", {"json": {"rows": 5}}, 400, "validation"),
        "sample_batch object rows": ("/sample_batch", {"json": {"rows": {}}}, 400, "validation"),
        "sample_batch rows of objects": ("/sample_batch", {"json": {"rows": [{}]}}, 400, "validation"),
        "sample_batch NaN rows": (
            "/sample_batch",
            {
                "content": b'{"rows": [[NaN' + b", 0" * 9 + b"]]}",
                "headers": {"content-type": "application/json"},
            },
            400,
            ".",
        ),
        "body over the limit": (
            "/translate",
            {"files": {"image": ("a.png", b"\0" * (MAX_BYTES + 2 * 1024 * 1024))}},
            413,
            "limit",
        ),
    }


REQUESTS = _requests()


@pytest.mark.parametrize("case", list(REQUESTS))
def test_bad_request(server: Server, http: httpx.Client, idle_rss: int, case: str) -> None:
    route, kwargs, status, message = REQUESTS[case]
    r = http.post(route, **kwargs)
    if status == 200:
        assert r.status_code == 200, f"{case}: {r.status_code} {r.text[:300]}"
    else:
        _assert_refused(r, status, message, case)
        assert len(r.content) < 4096, f"{case}: the error echoes the input ({len(r.content)} bytes)"
    assert server.alive()
    assert server.rss_bytes() < idle_rss + RSS_HEADROOM


def _raw(server: Server, request: bytes) -> tuple[int, bytes]:
    """Send bytes no HTTP client would (httpx refuses a non-numeric Content-Length); (status, body)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_invalid_content_length_is_400(server: Server) -> None:
    auth = AUTH["Authorization"].encode()
    status, body = _raw(
        server,
        b"POST /translate HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
        b"Content-Length: abc\r\nConnection: close\r\n\r\nx",
    )
    assert 400 <= status < 500 and b"Traceback" not in body
    assert server.alive()


def test_health_endpoints_stay_open_and_api_needs_the_token(server: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=5).status_code == 200
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        r = httpx.post(
            f"{server.url}/translate", files={"image": ("a.png", PNG)}, headers=headers, timeout=10
        )
        assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
        assert TOKEN not in r.text
    assert (
        httpx.get(f"{server.url}/models", headers={"Authorization": "Basic abc"}, timeout=5).status_code
        == 401
    )


def test_no_server_log_line_reports_a_5xx(server: Server) -> None:
    """After the whole corpus, not one request was answered with a 5xx."""
    fatal = [line for line in server.log().splitlines() if "status=5" in line]
    assert not fatal, "\n".join(fatal[:5])


def test_corpus_size(capsys: pytest.CaptureFixture) -> None:
    """The corpus is what docs/RELIABILITY.md counts; keep it from shrinking unnoticed."""
    with capsys.disabled():
        print(
            f"\nbad-input corpus: {len(IMAGE_CASES)} image cases x 2 endpoints + {len(REQUESTS)} request cases"
        )
    assert len(IMAGE_CASES) >= 30 and len(REQUESTS) >= 30
