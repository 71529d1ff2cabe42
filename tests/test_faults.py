"""Faults the service must survive, on the real server: bad model files, SIGTERM, a killed worker.

* A corrupt, truncated or swapped ``model.onnx`` is refused at start-up with a message naming the
  file (strict, the default), or listed under ``unavailable`` while the rest serve (STRICT=0).
  A swapped file whose card was re-hashed to match has the right tensor names but the wrong
  output shape; it is caught by the test inference at load time instead of failing every request.
* SIGTERM with requests in flight (what Kubernetes sends): they complete, new ones are not served,
  and the process exits 0 within the grace period.
* A worker killed outright (OOM killer, segfault): /livez fails while it is gone — the signal
  Kubernetes' liveness probe acts on — and BentoML's arbiter starts a new worker that serves again.

(The batch job's SIGKILL-and-resume tests live in tests/test_batch.py.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.card import CardError, sha256_file
from service.zoo import Zoo, check_cards
from tests.server_utils import AUTH, REPO, TOKEN, Server, error_message, free_port, server_env, start_server
from tests.tiny_models import make_model, make_zoo

GRACE_S = 30  # well inside k8s/base/deployment.yaml's terminationGracePeriodSeconds (45)


def _png(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w + h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _swap_and_rehash(folder: Path, other: Path) -> None:
    """Put ``other``'s model.onnx in ``folder`` and make the card's sha256 match it."""
    shutil.copy(other / "model.onnx", folder / "model.onnx")
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "card.json").write_text(json.dumps(card, indent=2))


# -- bad model files (no server) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["truncated", "bit flipped", "empty", "swapped with another model", "deleted"],
)
def test_a_bad_model_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    root = make_zoo(tmp_path)
    onnx = root / "tiny-translate" / "model.onnx"
    data = onnx.read_bytes()
    if damage == "truncated":
        onnx.write_bytes(data[: len(data) // 2])
    elif damage == "bit flipped":
        onnx.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "empty":
        onnx.write_bytes(b"")
    elif damage == "swapped with another model":
        shutil.copy(root / "tiny-upscale" / "model.onnx", onnx)
    else:
        onnx.unlink()
    with pytest.raises(CardError, match=str(onnx)):
        check_cards(root, strict=True)  # what `bentoml serve` runs before spawning workers
    with pytest.raises(CardError, match=str(onnx)):
        Zoo.load(root, strict=True, threads=1)
    zoo = Zoo.load(root, strict=False, threads=1)
    assert zoo.names() == ["tiny-sample", "tiny-upscale"]
    assert str(onnx) in zoo.unavailable["tiny-translate"]


def test_a_swapped_and_rehashed_model_is_refused_by_its_output_shape(tmp_path: Path) -> None:
    root = make_zoo(tmp_path)
    _swap_and_rehash(root / "tiny-translate", root / "tiny-upscale")
    check_cards(root, strict=True)  # the sha256 matches: only running the graph can tell
    with pytest.raises(CardError, match=r"returns shape \(1, 3, 64, 64\).*promises \(1, 3, 32, 32\)"):
        Zoo.load(root, strict=True, threads=1)
    zoo = Zoo.load(root, strict=False, threads=1)
    assert "tiny-translate" not in zoo and "right model.onnx" in zoo.unavailable["tiny-translate"]


@pytest.mark.integration
@pytest.mark.parametrize("rehashed", [False, True], ids=["sha256 mismatch", "rehashed to match"])
def test_bentoml_serve_exits_on_a_swapped_model_naming_it(tmp_path: Path, rehashed: bool) -> None:
    root = make_zoo(tmp_path / "zoo", kinds=("translate", "upscale"))
    bad = root / "tiny-upscale" / "model.onnx"
    if rehashed:  # only opening and running the graph can tell: not a worker restart loop either
        _swap_and_rehash(root / "tiny-upscale", root / "tiny-translate")
    else:
        shutil.copy(root / "tiny-translate" / "model.onnx", bad)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service.service:Transfigure", "--port", str(free_port())],
        cwd=REPO,
        env=server_env(root, tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode != 0
    assert (f"{bad}: the graph returns shape" if rehashed else f"{bad}: sha256") in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60  # it refuses; it does not retry forever


# -- a server with an unusable model (STRICT=0), then SIGTERM during requests -----------------------


@pytest.fixture()
def drain_server(tmp_path: Path) -> Iterator[Server]:
    root = make_zoo(tmp_path / "zoo")
    make_model(root, "translate", "swapped")
    _swap_and_rehash(root / "swapped", root / "tiny-upscale")
    with (
        start_server(
            root,
            tmp_path / "server",
            TRANSFIGURE_API_TOKEN=TOKEN,
            TRANSFIGURE_STRICT="0",
            TRANSFIGURE_TILE="8",  # many tiles: an /upscale of 320x320 takes ~1 s or more, long enough to be in flight
            TRANSFIGURE_TIMEOUT="60",
        ) as s
    ):
        yield s


@pytest.mark.integration
def test_unusable_model_is_listed_and_sigterm_drains_in_flight_requests(drain_server: Server) -> None:
    server = drain_server
    listing = httpx.get(f"{server.url}/models", headers=AUTH, timeout=10).json()
    assert "returns shape" in listing["unavailable"]["swapped"]
    r = httpx.post(
        f"{server.url}/translate",
        headers=AUTH,
        files={"image": ("a.png", _png(8, 8))},
        data={"model": "swapped"},
        timeout=10,
    )
    assert r.status_code == 400 and "unavailable" in error_message(r)

    # three slow requests in flight, then SIGTERM
    image = _png(320, 320)
    t = time.monotonic()
    r = httpx.post(
        f"{server.url}/upscale",
        headers=AUTH,
        files={"image": ("a.png", image)},
        data={"model": "tiny-upscale"},
        timeout=60,
    )
    one = time.monotonic() - t
    assert r.status_code == 200
    results: list[object] = []

    def call() -> None:
        try:
            results.append(
                httpx.post(
                    f"{server.url}/upscale",
                    headers=AUTH,
                    files={"image": ("a.png", image)},
                    data={"model": "tiny-upscale"},
                    timeout=60,
                )
            )
        except httpx.HTTPError as e:  # recorded, so that the assertion below names it
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for th in threads:
        th.start()
    time.sleep(min(0.5, one / 2))  # all three sent; the first is computing, two wait their turn
    t_term = time.monotonic()
    server.terminate()
    time.sleep(0.2)
    try:  # a new request after SIGTERM is not served
        late = httpx.get(f"{server.url}/models", headers=AUTH, timeout=2)
        assert late.status_code >= 500 or late.status_code == 429, late.status_code
    except httpx.HTTPError:
        pass
    for th in threads:
        th.join(timeout=GRACE_S)
    assert [getattr(r, "status_code", r) for r in results] == [200, 200, 200]
    for r in results:
        assert Image.open(io.BytesIO(r.content)).size == (640, 640)  # type: ignore[attr-defined]
    code = server.proc.wait(timeout=GRACE_S)
    drained_in = time.monotonic() - t_term
    assert code == 0, server.log()[-2000:]
    assert drained_in < GRACE_S
    assert "status=5" not in server.log()
    print(f"\nSIGTERM with 3 requests of ~{one:.1f} s in flight: all 200, exit 0 after {drained_in:.1f} s")


# -- a killed worker ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_killed_worker_fails_livez_then_is_replaced(tmp_path: Path) -> None:
    with start_server(make_zoo(tmp_path / "zoo"), tmp_path / "server", TRANSFIGURE_API_TOKEN=TOKEN) as server:
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        # What a liveness probe sees while the worker is gone: no answer.
        assert not server.alive(timeout=1.0)
        while not server.alive(timeout=1.0):
            assert time.monotonic() - t0 < 60, "no new worker within 60 s"
            assert server.proc.poll() is None, "the arbiter died with its worker"
        recovered_in = time.monotonic() - t0
        server.wait_ready(30)
        new = server.worker_pids()
        assert new and pid not in new
        r = httpx.post(
            f"{server.url}/translate",
            headers=AUTH,
            files={"image": ("a.png", _png(20, 12))},
            data={"model": "tiny-translate"},
            timeout=30,
        )
        assert r.status_code == 200
        print(f"\nworker {pid} SIGKILLed: /livez failed, worker {new[0]} serving after {recovered_in:.1f} s")
