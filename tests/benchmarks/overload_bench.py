"""Overload benchmark: one worker on one core, ``hey`` on another; goodput and latency far past capacity.

The server (``bentoml serve``, ``TRANSFIGURE_THREADS=1``, one model) is pinned to core 0 with
``taskset``, the load generator ``hey`` (a native HTTP load generator, Debian package ``hey``) to
core 1, so that the figures are the server's and not the client's. Every request is a 256-px
``/translate`` of a photo with ``summer2winter``.

1. **Capacity**: ``hey -c 2`` (two clients back to back) for ``--duration`` seconds; capacity =
   answered requests per second, and the unloaded p99 is measured with one client.
2. **Overload, closed loop**: ``-c`` at 2x, 10x and 100x the capacity phase's clients.
3. **Overload, open loop**: a fixed total rate of 10x capacity (``-q`` per client over 200 clients).

For each phase: goodput (200 answers per second), admitted (200) p99 and max, refusal (429/503)
p99, statuses, 5xx other than 503, connection errors (requests sent minus answers: ``hey -n`` sets
how many are sent), ``/readyz`` right after the phase, and the server's RSS before and after.

    .venv/bin/python tests/benchmarks/overload_bench.py                       # this checkout
    .venv/bin/python tests/benchmarks/overload_bench.py --repo /tmp/before    # another checkout
    .venv/bin/python tests/benchmarks/overload_bench.py --json out.json --duration 15
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.server_utils import server_timing, start_server  # noqa: E402

MODEL = "summer2winter"
SIDE = 256
PHOTO = REPO / "tests" / "fixtures" / "yosemite" / "testA"
SERVER_CORE, CLIENT_CORE = 0, 1
CAPACITY_CLIENTS = 2
CLOSED_LOOP = (2, 10, 100)  # x the capacity phase's clients
OPEN_LOOP = 10  # x capacity, as a total rate
OPEN_LOOP_CLIENTS = 200
HEY_TIMEOUT_S = 60


def missing_tools() -> str | None:
    """Why this benchmark cannot run here, or None. Installs ``hey`` with apt-get where root may."""
    if (
        shutil.which("hey") is None
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("apt-get")
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "hey"], capture_output=True, timeout=300, check=False
            )
    if shutil.which("hey") is None:
        return "the load generator `hey` is not installed (Debian: apt-get install hey)"
    if shutil.which("taskset") is None:
        return "`taskset` (util-linux) is not installed: the server and the client cannot be pinned"
    try:
        cores = os.sched_getaffinity(0)
    except AttributeError:
        return "no CPU affinity on this platform"
    if not {SERVER_CORE, CLIENT_CORE} <= cores:
        return f"needs cores {SERVER_CORE} and {CLIENT_CORE} (one for the server, one for hey); have {sorted(cores)}"
    return None


def request_body(folder: Path) -> tuple[Path, str]:
    """A multipart body with a 256-px photo and the model name; (file, content type)."""
    photo = sorted(p for p in PHOTO.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[0]
    img = Image.open(photo).convert("RGB")
    side = min(img.size)
    img = img.crop((0, 0, side, side)).resize((SIDE, SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    boundary = "transfigure-overload-bench"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode(),
        buf.getvalue(),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    path = folder / "body.multipart"
    path.write_bytes(b"".join(parts))
    return path, f"multipart/form-data; boundary={boundary}"


@dataclass
class Phase:
    name: str
    clients: int
    rate: float | None  # total requests/s of an open loop, None for a closed one
    sent: int
    elapsed_s: float
    statuses: dict[str, int]
    admitted_ms: list[float] = field(repr=False)
    refused_ms: list[float] = field(repr=False)
    ready_after_ms: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    # where an admitted request's time went, from probes sent beside hey (Server-Timing, ms):
    # {"total", "queue" (waiting for an inference lane), "outside" (before its handler thread ran:
    # the event loop and anyio's thread limiter), "work" (decode + infer + encode)} -> medians
    probe: dict[str, float] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.sent - self.answered

    @property
    def goodput(self) -> float:
        return self.statuses.get("200", 0) / max(self.elapsed_s, 1e-9)

    @property
    def other_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5") and s != "503")

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["admitted_ms"], out["refused_ms"]
        out.update(
            goodput=self.goodput,
            errors=self.errors,
            other_5xx=self.other_5xx,
            admitted_p50_ms=pct(self.admitted_ms, 50),
            admitted_p99_ms=pct(self.admitted_ms, 99),
            admitted_max_ms=max(self.admitted_ms, default=float("nan")),
            refused_p99_ms=pct(self.refused_ms, 99),
        )
        return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def hey(
    url: str, body: tuple[Path, str], clients: int, n: int, per_client_qps: float | None = None
) -> list[list[str]]:
    cmd = ["taskset", "-c", str(CLIENT_CORE), "hey", "-n", str(n), "-c", str(clients)]
    if per_client_qps:
        cmd += ["-q", f"{per_client_qps:g}"]
    cmd += ["-t", str(HEY_TIMEOUT_S), "-m", "POST", "-D", str(body[0]), "-T", body[1], "-o", "csv", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return [r for r in rows[1:] if len(r) >= 8]


def phase(
    name: str,
    server: Any,
    url: str,
    body: tuple[Path, str],
    clients: int,
    n: int,
    rate: float | None = None,
    probe: bool = True,
) -> Phase:
    n = math.ceil(n / clients) * clients  # hey sends n // clients per client
    rss_before = server.rss_bytes()
    stop = threading.Event()
    probes: list[dict[str, float]] = []
    prober = threading.Thread(target=_probe, args=(url, body, stop, probes), daemon=True)
    if probe:
        prober.start()
    try:
        rows = hey(url, body, clients, n, rate / clients if rate else None)
    finally:
        stop.set()
        if probe:
            prober.join(70)
    statuses: Counter[str] = Counter()
    admitted, refused = [], []
    end = 0.0
    for r in rows:
        seconds, status, offset = float(r[0]), r[6], float(r[7])
        statuses[status] += 1
        end = max(end, offset + seconds)
        (admitted if status == "200" else refused if status in {"429", "503"} else []).append(seconds * 1000)
    t0 = time.perf_counter()
    server.wait_ready(30)
    ready_ms = (time.perf_counter() - t0) * 1000
    probe = {k: statistics.median(p[k] for p in probes) for k in probes[0]} if probes else {}
    probe["n"] = len(probes)
    return Phase(
        name,
        clients,
        rate,
        n,
        end,
        dict(statuses),
        admitted,
        refused,
        ready_ms,
        rss_before,
        server.rss_bytes(),
        probe,
    )


def _probe(url: str, body: tuple[Path, str], stop: threading.Event, out: list[dict[str, float]]) -> None:
    """Every 0.5 s one request beside the load; its Server-Timing splits an admitted request's time."""
    data = body[0].read_bytes()
    with httpx.Client(timeout=HEY_TIMEOUT_S) as client:
        while not stop.wait(0.5):
            t0 = time.perf_counter()
            try:
                r = client.post(url, content=data, headers={"content-type": body[1]})
            except httpx.HTTPError:
                continue
            total = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                continue
            stages = server_timing(r.headers.get("server-timing"))
            work = sum(stages.get(k, 0.0) for k in ("decode", "infer", "encode"))
            queue = stages.get("queue", 0.0)
            out.append(
                {"total": total, "queue": queue, "work": work, "outside": max(0.0, total - work - queue)}
            )


@contextlib.contextmanager
def pinned_server(repo: Path, workdir: Path, **env: str):
    """``bentoml serve`` of ``repo`` on core 0, one worker, one thread, one model."""
    pinned = {"TRANSFIGURE_THREADS": "1", "TRANSFIGURE_MODELS": MODEL, "TRANSFIGURE_WORKERS": "1",
              "OMP_NUM_THREADS": "1"}  # fmt: skip
    server = start_server(
        repo / "models", workdir, ready_timeout=180, repo=repo, prefix=["taskset", "-c", str(SERVER_CORE)],
        **{**env, **pinned},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def run(repo: Path, workdir: Path, duration_s: float = 15.0, **env: str) -> dict[str, Any]:
    """Every phase against a fresh pinned server of ``repo``; returns {"phases": [...], ...}."""
    workdir.mkdir(parents=True, exist_ok=True)
    body = request_body(workdir)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CORE})  # this process (the probes) too: core 0 is the server's
    try:
        return _run(repo, workdir, body, duration_s, **env)
    finally:
        os.sched_setaffinity(0, affinity)


def _run(repo: Path, workdir: Path, body: tuple[Path, str], duration_s: float, **env: str) -> dict[str, Any]:
    with pinned_server(Path(repo), workdir / "server", **env) as server:
        url = f"{server.url}/translate"
        for _ in range(20):  # warm-up
            with open(body[0], "rb") as f:
                httpx.post(url, content=f.read(), headers={"content-type": body[1]}, timeout=60)
        one = phase("unloaded (1 client)", server, url, body, 1, 150, probe=False)
        cap_n = max(
            50, int(duration_s * 1.2 / max(pct(one.admitted_ms, 50) / 1000, 1e-3) * CAPACITY_CLIENTS / 2)
        )
        cap = phase(
            f"capacity ({CAPACITY_CLIENTS} clients)", server, url, body, CAPACITY_CLIENTS, cap_n, probe=False
        )
        capacity = cap.goodput
        phases = [one, cap]
        for k in CLOSED_LOOP:
            clients = k * CAPACITY_CLIENTS
            pilot = phase(
                "pilot", server, url, body, clients, max(clients * 3, int(capacity * 2)), probe=False
            )
            rate = pilot.answered / max(pilot.elapsed_s, 1e-9)  # answers/s, refusals included
            phases.append(
                phase(
                    f"{k}x (-c {clients})",
                    server,
                    url,
                    body,
                    clients,
                    max(clients * 2, int(rate * duration_s)),
                )
            )
        rate = OPEN_LOOP * capacity
        phases.append(
            phase(
                f"{OPEN_LOOP}x open loop ({rate:.0f} req/s)",
                server,
                url,
                body,
                OPEN_LOOP_CLIENTS,
                int(rate * duration_s),
                rate,
            )
        )
        log_tail = server.log()[-2000:]
        admission = "transfigure_queue_target_seconds" in httpx.get(f"{server.url}/metrics").text
    return {
        "repo": str(repo),
        "capacity": capacity,
        "unloaded_p99_ms": pct(one.admitted_ms, 99),
        "phases": [p.summary() for p in phases],
        "log_tail": log_tail,
        "queue_admission": admission,
    }


def _probe_text(probe: dict[str, float]) -> str:
    if not probe.get("n"):
        return "–"
    return (
        " / ".join(f"{probe[k]:,.0f}" for k in ("total", "queue", "outside", "work")) + f" ({probe['n']:.0f})"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        f"capacity {result['capacity']:.1f} req/s; unloaded p99 {result['unloaded_p99_ms']:.0f} ms",
        "| phase | goodput req/s | % of capacity | admitted p99 / max ms | refusal p99 ms | statuses | other 5xx, errors | ready after ms | RSS before → after MiB | probe: total / lane queue / outside / work ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        statuses = ", ".join(f"{n} × {s}" for s, n in sorted(p["statuses"].items()))
        lines.append(
            f"| {p['name']} | {p['goodput']:.1f} | {100 * p['goodput'] / result['capacity']:.0f} % | "
            f"{p['admitted_p99_ms']:,.0f} / {p['admitted_max_ms']:,.0f} | {p['refused_p99_ms']:,.0f} | {statuses} | "
            f"{p['other_5xx']}, {p['errors']} | {p['ready_after_ms']:.0f} | "
            f"{p['rss_before'] / 2**20:.0f} → {p['rss_after'] / 2**20:.0f} | {_probe_text(p.get('probe') or {})} |"
        )
    return "\n".join(lines)


def done_when(result: dict[str, Any], target_ms: float | None = None) -> list[str]:
    """The criteria of docs/RELIABILITY.md, "Overload"; the list of those not met (empty: all met)."""
    capacity, unloaded_p99 = result["capacity"], result["unloaded_p99_ms"]
    if target_ms is None:
        from service.config import DEFAULT_MAX_QUEUE_MS

        target_ms = DEFAULT_MAX_QUEUE_MS
    p99_bound = max(1000.0, 5 * unloaded_p99)
    problems = []
    overload = [p for p in result["phases"] if p["clients"] > CAPACITY_CLIENTS]
    for p in result["phases"]:
        if p["other_5xx"] or p["errors"]:
            problems.append(
                f"{p['name']}: {p['other_5xx']} 5xx other than 503, {p['errors']} connection errors"
            )
        if p["ready_after_ms"] > 1000:
            problems.append(f"{p['name']}: ready only {p['ready_after_ms']:.0f} ms after the load")
    for p in overload:
        if p["goodput"] < 0.9 * capacity:
            problems.append(f"{p['name']}: goodput {p['goodput']:.1f} req/s < 90 % of {capacity:.1f}")
        if p["admitted_p99_ms"] > p99_bound:
            problems.append(f"{p['name']}: admitted p99 {p['admitted_p99_ms']:.0f} ms > {p99_bound:.0f} ms")
        if p["admitted_max_ms"] > 2 * target_ms:
            problems.append(
                f"{p['name']}: slowest admitted {p['admitted_max_ms']:.0f} ms > 2 x {target_ms:.0f} ms"
            )
        if p["refused_p99_ms"] > 50:
            problems.append(f"{p['name']}: refusal p99 {p['refused_p99_ms']:.0f} ms > 50 ms")
    phases = result["phases"]
    growth = phases[-1]["rss_after"] - phases[1]["rss_before"]
    if growth > 64 * 2**20:
        problems.append(f"RSS grew {growth / 2**20:.0f} MiB over the overload phases")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout to serve (default: this one)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per phase (about)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    why = missing_tools()
    if why:
        sys.exit(why)
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="overload_bench_"))
    result = run(args.repo.resolve(), workdir, args.duration)
    print(table(result))
    problems = done_when(result)
    print("\n".join(["criteria not met:", *problems]) if problems else "all criteria met")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
