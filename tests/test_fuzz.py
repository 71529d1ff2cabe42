"""Fuzz the real server with schemathesis, driven by the OpenAPI document it serves at /docs.json.

Every operation of the document gets generated requests, valid (``positive``) and schema-breaking
(``negative``), with image fields filled by a registered strategy that draws real PNG / JPEG / WebP /
GIF / BMP files of random sizes and modes, plus broken ones. A 4xx is a correct answer to a bad
request; what must never happen is a 5xx, an error without a message, a traceback or a server path
in a body, or a server that stops answering /livez.

Quick by default (a few hundred cases, well under a minute); ``TRANSFIGURE_LONG_TESTS=1`` runs
five times as many (>= 1,000). ``pytest tests/test_fuzz.py -s`` prints the status counts.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.server_utils import AUTH, TOKEN, Server, error_message, leaks, long_tests, start_server
from tests.tiny_models import make_model, make_zoo

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.integration

SCALE = 5 if long_tests() else 1
# (positive, negative) cases per operation; the image endpoints get most of them.
BUDGET = {
    "/translate": (70, 25),
    "/upscale": (45, 20),
    "/sample": (45, 20),
    "/sample_batch": (25, 15),
    "/models": (10, 5),
}
VALID_MODELS = {"/translate": "tiny-translate", "/upscale": "tiny-upscale", "/sample": "tiny-sample"}


# -- the image strategy ------------------------------------------------------------------------------

_FORMAT_MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "GIF": ("L", "P"),
    "BMP": ("1", "L", "P", "RGB"),
}


def _encode(fmt: str, mode: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """Real image files of random format, mode and size (1-48 px a side), sometimes damaged."""
    fmt = draw(st.sampled_from(sorted(_FORMAT_MODES)))
    mode = draw(st.sampled_from(_FORMAT_MODES[fmt]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    data = _encode(fmt, mode, w, h, draw(st.integers(0, 2**16)))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "prefix"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    elif damage == "prefix":
        data = draw(st.binary(max_size=16)) + data
    return data


def _binary_strategy() -> st.SearchStrategy[bytes]:
    return st.one_of(image_files(), image_files(), st.binary(max_size=256))


# -- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = make_zoo(tmp_path_factory.mktemp("fuzz_zoo"))
    make_model(root, "sample", "broken")
    (root / "broken" / "model.onnx").write_bytes(b"not onnx")
    with start_server(
        root,
        tmp_path_factory.mktemp("fuzz_server"),
        TRANSFIGURE_API_TOKEN=TOKEN,
        TRANSFIGURE_STRICT="0",
        TRANSFIGURE_MAX_BYTES=str(1024 * 1024),
        TRANSFIGURE_MAX_SIDE="128",
        TRANSFIGURE_TILE="16",
        TRANSFIGURE_SAMPLE_MAX_LATENCY_MS="2000",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def schema(server: Server) -> Any:
    from schemathesis.specs.openapi import unregister_string_format

    schemathesis.openapi.format("binary", _binary_strategy())
    try:
        loaded = schemathesis.openapi.from_url(f"{server.url}/docs.json", headers=AUTH, timeout=30)
        loaded.validate()  # our /docs.json must be valid OpenAPI 3.0 (BentoML's is not)
        yield loaded
    finally:
        unregister_string_format("binary")


def test_docs_json_is_valid_openapi_3_0(server: Server, schema: Any) -> None:
    doc = httpx.get(f"{server.url}/docs.json", headers=AUTH, timeout=10).json()
    text = json.dumps(doc)
    for invalid in ('"type": "file"', '"type": "tensor"', '"type": "null"'):
        assert invalid not in text, f"/docs.json still has {invalid}"
    image = doc["components"]["schemas"]["translate__Input"]["properties"]["image"]
    assert image["type"] == "string" and image["format"] == "binary"
    ops = {op.ok().path for op in schema.get_all_operations()}
    assert set(BUDGET) <= ops, ops


def _check(server: Server, path: str, r: Any) -> None:
    """One fuzz answer: never 5xx; a 4xx says what was wrong; nothing internal leaks."""
    body = r.content.decode("utf-8", "replace")
    content_type = (r.headers.get("content-type") or [""])[0]  # schemathesis: lists of values
    where = f"{r.request.method} {path} -> {r.status_code}: {body[:300]}"
    assert r.status_code < 500, where
    if r.status_code >= 400:
        assert content_type.startswith("application/json"), where
        assert len(error_message(r)) >= 10, where
        assert not leaks(body), (leaks(body), where)
    elif path in ("/translate", "/upscale"):
        assert content_type.startswith("image/"), where


def _fuzz(server: Server, op: Any, method: Any, n: int, counts: Counter) -> None:
    """``n`` generated requests to one operation, each checked by ``_check``."""
    valid = VALID_MODELS.get(op.path)

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=method), use_valid=st.booleans())
    def run(case: Any, use_valid: bool) -> None:
        # Random model names only ever reach "unknown model": half the time use the real one so
        # that the generated images get decoded and run.
        if valid and use_valid and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = valid
        r = case.call(base_url=server.url, headers=AUTH, timeout=30)
        counts[f"{r.status_code}"] += 1
        counts["cases"] += 1
        _check(server, op.path, r)

    run()


def test_fuzz_every_operation(server: Server, schema: Any, capsys: pytest.CaptureFixture) -> None:
    from schemathesis import GenerationMode

    methods = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    statuses: dict[str, Counter] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path not in BUDGET:
            continue
        counts = statuses.setdefault(op.path, Counter())
        for method, n in zip(methods, BUDGET[op.path], strict=True):
            _fuzz(server, op, method, n * SCALE, counts)
        assert server.alive(), f"/livez failed after fuzzing {op.path}"

    total = sum(c["cases"] for c in statuses.values())
    with capsys.disabled():
        print(f"\nfuzzed {total} cases:")
        for path, c in statuses.items():
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k != "cases")
            print(f"  {path:<14} {c['cases']:>5} cases  ({codes})")
    assert total >= 200 * SCALE
    # the strategy reaches the models, not only the validators
    assert statuses["/translate"]["200"] > 0 and statuses["/upscale"]["200"] > 0
    assert statuses["/sample"]["200"] > 0


def test_server_log_has_no_unexpected_errors(server: Server) -> None:
    """BentoML logs every 5xx as "Exception on"; after the fuzz run there must be none of ours."""
    log = server.log()
    fatal = [line for line in log.splitlines() if "status=5" in line]
    assert not fatal, "\n".join(fatal[:5])
    assert server.alive()


def test_image_strategy_makes_readable_images() -> None:
    """The strategy's undamaged files are real images of the drawn format (else the fuzz is hollow)."""
    for fmt, modes in _FORMAT_MODES.items():
        for mode in modes:
            data = _encode(fmt, mode, 5, 3, 0)
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == fmt and im.size == (5, 3)
