"""Load test: measure the server's capacity, then hold 1x and 2x of it; latency, statuses and memory.

1. **Capacity**: a closed loop (``--concurrency`` clients, each sending its next request when the
   last one is answered) for a few seconds; capacity = answered requests per second.
2. **1x and 2x**: an open loop sends requests at a fixed rate (capacity, then twice capacity),
   whether or not earlier ones were answered, as real traffic does. At 2x the server must shed
   what it cannot do with a deliberate overload answer (429/503 with Retry-After), never crash or
   answer another 5xx.
3. **Memory**: the server's RSS (arbiter + workers) is sampled every 0.5 s. The mix sends images of
   many sizes (every request a different shape for onnxruntime), so a per-request or per-shape
   leak — e.g. ORT's memory arena growing with each new shape — shows as a rising RSS.

Runs against tiny test models (started here on 127.0.0.1) unless ``--url`` points at a running server
(then ``--server-pid`` lets it read that server's memory).

    .venv/bin/python tests/benchmarks/load_bench.py --duration 60          # 60 s at 1x, 60 s at 2x
    .venv/bin/python tests/benchmarks/load_bench.py --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OVERLOAD = (429, 503)  # deliberate "too busy" answers; they must carry Retry-After


# -- the request mix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    files: dict[str, tuple[str, bytes]] | None
    data: dict[str, str] | None
    json: dict[str, Any] | None


def request_mix(
    n: int = 64, seed: int = 0, max_side: int = 200, models: dict[str, str] | None = None
) -> list[Request]:
    """``n`` requests, encoded up front: translate at many sizes, upscale (smaller), sample.

    Every image has a different width x height, so onnxruntime sees a new input shape each time.
    """
    models = models or {"translate": "tiny-translate", "upscale": "tiny-upscale", "sample": "tiny-sample"}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = ("translate", "translate", "upscale", "sample")[i % 4]
        if kind == "sample":
            body = {
                "model": models["sample"],
                "n": int(rng.integers(1, 17)),
                "seed": int(rng.integers(1 << 30)),
            }
            out.append(Request("/sample", None, None, body))
            continue
        side = max_side if kind == "translate" else max_side // 2
        w, h = (int(v) for v in rng.integers(8, side + 1, 2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        out.append(Request(f"/{kind}", {"image": ("in.png", buf.getvalue())}, {"model": models[kind]}, None))
    return out


# -- results ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase of load: what was sent, what came back, how long it took, and memory over time."""

    name: str
    target_rps: float | None
    duration_s: float = 0.0
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    overload_without_retry_after: int = 0
    bad_bodies: list[str] = field(default_factory=list)  # 5xx bodies, for the report
    rss: list[tuple[float, int]] = field(default_factory=list)

    @property
    def answered_rps(self) -> float:
        return self.statuses[200] / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ok:
            return float("nan")
        return float(np.percentile(self.latencies_ok, q)) * 1000.0

    def server_errors(self) -> int:
        return sum(
            v for k, v in self.statuses.items() if isinstance(k, int) and k >= 500 and k not in OVERLOAD
        )

    def summary(self) -> dict[str, Any]:
        rss = [r for _, r in self.rss]
        return {
            "phase": self.name,
            "target_rps": None if self.target_rps is None else round(self.target_rps, 1),
            "duration_s": round(self.duration_s, 1),
            "sent": self.sent,
            "ok_rps": round(self.answered_rps, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "rss_start_mb": round(rss[0] / 2**20, 1) if rss else None,
            "rss_end_mb": round(rss[-1] / 2**20, 1) if rss else None,
            "rss_max_mb": round(max(rss) / 2**20, 1) if rss else None,
        }


def rss_growth(samples: list[tuple[float, int]]) -> float:
    """Bytes between the median RSS of the last quarter of ``samples`` and of the first quarter."""
    values = [r for _, r in samples]
    if len(values) < 4:
        return 0.0
    q = max(1, len(values) // 4)
    return statistics.median(values[-q:]) - statistics.median(values[:q])


# -- drivers ----------------------------------------------------------------------------------------


async def _send(client: httpx.AsyncClient, req: Request, phase: Phase) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post(req.path, files=req.files, data=req.data, json=req.json)
    except httpx.HTTPError as e:
        phase.statuses[type(e).__name__] += 1
        return
    dt = time.perf_counter() - t0
    phase.statuses[r.status_code] += 1
    if r.status_code == 200:
        phase.latencies_ok.append(dt)
    elif r.status_code in OVERLOAD and "retry-after" not in r.headers:
        phase.overload_without_retry_after += 1
    if r.status_code >= 500 and r.status_code not in OVERLOAD and len(phase.bad_bodies) < 5:
        phase.bad_bodies.append(f"{req.path} {r.status_code} {r.text[:200]}")


async def _sample_rss(rss: Callable[[], int] | None, phase: Phase, stop: asyncio.Event) -> None:
    if rss is None:
        return
    t0 = time.monotonic()
    while not stop.is_set():
        phase.rss.append((time.monotonic() - t0, rss()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    phase.rss.append((time.monotonic() - t0, rss()))


def _client(url: str, headers: dict[str, str], connections: int) -> httpx.AsyncClient:
    # Idle connections are dropped after 2 s, before the server's keep-alive timeout (uvicorn: 5 s)
    # closes them: otherwise a request sent on a connection the server is closing at that very
    # moment fails with a ReadError, an artefact of the client, not of the server.
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits)


async def closed_loop(
    url: str,
    mix: list[Request],
    concurrency: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
    rss: Callable[[], int] | None = None,
    name: str = "capacity",
) -> Phase:
    """``concurrency`` clients back to back for ``duration_s``: the server's capacity."""
    phase = Phase(name, None)
    stop = asyncio.Event()
    async with _client(url, headers or {}, concurrency) as client:
        sampler = asyncio.create_task(_sample_rss(rss, phase, stop))
        t0 = time.monotonic()
        counter = iter(range(1 << 62))

        async def worker() -> None:
            while time.monotonic() - t0 < duration_s:
                phase.sent += 1
                await _send(client, mix[next(counter) % len(mix)], phase)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.duration_s = time.monotonic() - t0
        stop.set()
        await sampler
    return phase


async def open_loop(
    url: str,
    mix: list[Request],
    rps: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
    rss: Callable[[], int] | None = None,
    name: str = "open",
    max_outstanding: int = 256,
) -> Phase:
    """Send at ``rps`` for ``duration_s`` regardless of answers; wait for the last ones to finish.

    Beyond ``max_outstanding`` unanswered requests the client stops sending (counted as
    ``client_backlog``): a server that stops answering must not make the load test itself blow up.
    """
    phase = Phase(name, rps)
    stop = asyncio.Event()
    async with _client(url, headers or {}, max_outstanding) as client:
        sampler = asyncio.create_task(_sample_rss(rss, phase, stop))
        tasks: set[asyncio.Task] = set()
        t0 = time.monotonic()
        i = 0
        while (now := time.monotonic() - t0) < duration_s:
            due = int(now * rps) + 1
            while i < due:
                if len(tasks) >= max_outstanding:
                    phase.statuses["client_backlog"] += 1
                else:
                    task = asyncio.create_task(_send(client, mix[i % len(mix)], phase))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    phase.sent += 1
                i += 1
            await asyncio.sleep(min(0.01, 1.0 / rps))
        if tasks:
            await asyncio.gather(*tasks)
        phase.duration_s = time.monotonic() - t0
        stop.set()
        await sampler
    return phase


async def run_load(
    url: str,
    duration_s: float,
    headers: dict[str, str] | None = None,
    rss: Callable[[], int] | None = None,
    concurrency: int = 4,
    capacity_s: float = 3.0,
    mix: list[Request] | None = None,
) -> list[Phase]:
    """Warm up (every request of the mix once), measure capacity, then 1x and 2x for ``duration_s``."""
    mix = mix or request_mix()
    warm = Phase("warm-up", None)
    async with _client(url, headers or {}, 1) as client:
        t0 = time.monotonic()
        for req in mix:
            warm.sent += 1
            await _send(client, req, warm)
        warm.duration_s = time.monotonic() - t0
    cap = await closed_loop(url, mix, concurrency, capacity_s, headers, rss, name="capacity")
    capacity = max(cap.answered_rps, 1.0)
    one = await open_loop(url, mix, capacity, duration_s, headers, rss, name="1x")
    two = await open_loop(url, mix, 2 * capacity, duration_s, headers, rss, name="2x")
    return [warm, cap, one, two]


def print_table(phases: list[Phase], out: Any = sys.stdout) -> None:
    cols = (
        "phase",
        "target_rps",
        "ok_rps",
        "sent",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "rss_start_mb",
        "rss_end_mb",
    )
    rows = [[str(p.summary()[c]) for c in cols] for p in phases]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), file=out)
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=out)
    for p in phases:
        print(f"{p.name}: statuses {dict(p.statuses)}", file=out)


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running server (default: start one on tiny test models)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's PID, to sample its memory")
    p.add_argument("--token", help="bearer token of the server at --url")
    p.add_argument("--duration", type=float, default=60.0, help="seconds at 1x and again at 2x (default 60)")
    p.add_argument("--concurrency", type=int, default=4, help="clients of the capacity probe (default 4)")
    p.add_argument(
        "--max-concurrency", type=int, default=16, help="TRANSFIGURE_MAX_CONCURRENCY of the tiny server"
    )
    p.add_argument("--json", type=Path, help="also write the summaries here")
    args = p.parse_args(argv)

    import psutil

    from tests.server_utils import AUTH, TOKEN, start_server
    from tests.tiny_models import make_zoo

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    server = None
    rss: Callable[[], int] | None = None
    if args.url:
        url = args.url
        if args.server_pid:
            root = psutil.Process(args.server_pid)

            def rss() -> int:
                return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])

    else:
        tmp = Path(tempfile.mkdtemp(prefix="load_bench_"))
        server = start_server(
            make_zoo(tmp / "zoo"),
            tmp / "server",
            TRANSFIGURE_API_TOKEN=TOKEN,
            TRANSFIGURE_MAX_CONCURRENCY=str(args.max_concurrency),
            TRANSFIGURE_MAX_SIDE="256",
            TRANSFIGURE_TILE="64",
        )
        url, headers, rss = server.url, AUTH, server.rss_bytes
    try:
        phases = asyncio.run(run_load(url, args.duration, headers, rss, args.concurrency))
    finally:
        if server is not None:
            server.stop()
    print_table(phases)
    for ph in phases[2:]:
        print(f"{ph.name}: RSS growth {rss_growth(ph.rss) / 2**20:+.1f} MiB over {ph.duration_s:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([ph.summary() for ph in phases], indent=2))
    bad = sum(ph.server_errors() for ph in phases) + sum(ph.overload_without_retry_after for ph in phases)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
