"""Overload on the real server: refused at once with 503 + Retry-After, admitted requests stay fast.

``test_queue_time_refusal_is_a_503_with_retry_after_and_a_reason`` runs everywhere (a tiny zoo, a
queueing target of 1 ms, a burst of concurrent requests). ``test_overload_done_when`` drives one
worker pinned to one core with ``hey`` on another (``tests/benchmarks/overload_bench.py``) and
asserts the criteria of docs/RELIABILITY.md, "Overload" (not all met yet: marked xfail); it needs
``TRANSFIGURE_LONG_TESTS=1``, ``hey``, ``taskset`` and two cores, and is skipped with the reason
otherwise.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.benchmarks import overload_bench
from tests.server_utils import AUTH, TOKEN, error_message, leaks, long_tests, start_server
from tests.tiny_models import make_zoo


def _png(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels else r"(?:\{[^}]*\})?")
    values = [float(m.group(1)) for m in re.finditer(rf"^{pattern} ([0-9.e+-]+)$", text, re.M)]
    assert values, f"{name}{{{labels}}} not in /metrics"
    return sum(values)


@pytest.mark.integration
def test_queue_time_refusal_is_a_503_with_retry_after_and_a_reason(tmp_path: Path) -> None:
    with start_server(
        make_zoo(tmp_path / "zoo", kinds=("translate",)),
        tmp_path / "server",
        TRANSFIGURE_API_TOKEN=TOKEN,
        TRANSFIGURE_MAX_QUEUE_MS="1",  # every request that has to wait at all is refused
        TRANSFIGURE_INFER_CONCURRENCY="1",
        TRANSFIGURE_THREADS="1",
    ) as server:
        image = _png(400, 400)

        def post(_: int) -> httpx.Response:
            return httpx.post(
                f"{server.url}/translate",
                headers=AUTH,
                files={"image": ("x.png", image, "image/png")},
                data={"model": "tiny-translate"},
                timeout=60,
            )

        assert post(0).status_code == 200  # alone: admitted, and its inference time is learnt
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(post, range(72)))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 503}, statuses
        refused = [r for r in answers if r.status_code == 503]
        assert refused and 200 in statuses, statuses
        for r in refused:
            assert int(r.headers["retry-after"]) >= 1
            body = r.json()
            assert body["reason"] in {"expected_wait", "queue_timeout"}, body
            assert body["retry_after_s"] == int(r.headers["retry-after"])
            assert "TRANSFIGURE_MAX_QUEUE_MS" in error_message(r) and not leaks(r.text)
        assert post(0).status_code == 200  # the load is gone: served again at once
        metrics = httpx.get(f"{server.url}/metrics").text
        counted = sum(
            _metric(metrics, "transfigure_refusals_total", f'reason="{reason}"')
            for reason in ("expected_wait", "queue_timeout")
        )
        assert counted == len(refused)
        assert _metric(metrics, "transfigure_refusals_total", 'reason="pixel_budget"') == 0
        assert _metric(metrics, "transfigure_queue_target_seconds") == pytest.approx(0.001)
        assert _metric(metrics, "transfigure_inference_lanes") == 1
        served = _metric(metrics, "transfigure_queue_seconds_count", 'endpoint="translate"')
        assert served == statuses.count(200) + 2
        assert server.alive()


@pytest.mark.integration
@pytest.mark.xfail(
    reason="goodput at 10x-100x is 27-76 % of capacity, refusal p99 ~0.5 s: each refusal's HTTP "
    "handling takes CPU from the inference on one core (docs/RELIABILITY.md, 'Overload')",
    strict=False,
)
def test_overload_done_when(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One worker on one core, hey on the other: goodput, admitted latency, refusals (about 2 minutes)."""
    if not long_tests():
        pytest.skip("needs an otherwise idle machine for about 2 minutes: TRANSFIGURE_LONG_TESTS=1")
    why = overload_bench.missing_tools()
    if why:
        pytest.skip(why)
    result = overload_bench.run(overload_bench.REPO, tmp_path, duration_s=10.0)
    with capsys.disabled():
        print()
        print(overload_bench.table(result))
    problems = overload_bench.done_when(result)
    assert not problems, "\n".join(problems)
