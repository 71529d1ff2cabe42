"""Start the real ``bentoml serve`` on 127.0.0.1 for reliability tests, and look at its processes.

The reliability tests (fuzzing, bad inputs, load, faults) each need their own server with their own
settings, and some of them kill or signal it, so this is a plain helper rather than a shared
fixture: ``start_server(zoo, tmp, env)`` returns a ``Server`` once ``/readyz`` answers 200, and
``Server.stop()`` terminates it (``with start_server(...) as server:`` does both).

Nothing here talks to any host but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
SERVICE = "service.service:Transfigure"
TOKEN = "reliability-token-7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Things that must never reach a client: a traceback, a path of the server's files or packages.
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", str(REPO), "/tmp/pytest-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(zoo: Path, home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test server: ``zoo`` as its models, a private BENTOML_HOME, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFIGURE_")}
    env.update(
        {
            "TRANSFIGURE_MODELS_DIR": str(zoo),
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Server:
    """A running ``bentoml serve`` (the arbiter process) and the URL it answers on."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    _log: Any = field(default=None, repr=False)

    # -- processes -----------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The arbiter and every process below it (the HTTP workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> list[int]:
        """PIDs of the service workers (the processes that load the models and answer HTTP)."""
        pids = []
        for p in self.processes()[1:]:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if "serve_http" in cmd or "worker" in cmd:
                pids.append(p.pid)
        return pids

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree (arbiter + workers)."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def log(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    # -- health --------------------------------------------------------------------------------
    def alive(self, timeout: float = 5.0) -> bool:
        """True when /livez answers 200 within ``timeout`` seconds."""
        try:
            return httpx.get(f"{self.url}/livez", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, deadline_s: float = 90.0) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {deadline_s:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.25)

    # -- stopping ------------------------------------------------------------------------------
    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL the whole tree if it has not exited within ``timeout`` seconds."""
        procs = self.processes()
        self.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self.proc.wait(timeout=10)
        # a worker orphaned by a killed arbiter must not outlive the test
        for p in procs[1:]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    zoo: Path,
    workdir: Path,
    ready_timeout: float = 90.0,
    wait: bool = True,
    repo: Path = REPO,
    prefix: Sequence[str] = (),
    **env: str,
) -> Server:
    """Start ``bentoml serve`` on a free loopback port with ``zoo``; ``env`` adds TRANSFIGURE_* settings.

    ``workdir`` holds the server's log and BENTOML_HOME; ``repo`` is the checkout served, ``prefix``
    a command the server runs under (e.g. ``taskset -c 0``). Raises RuntimeError (with the log's
    tail) if the server exits or is not ready within ``ready_timeout`` seconds.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            SERVICE,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=repo,
        env=server_env(zoo, workdir / "bentoml_home", **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, _log=log)
    if wait:
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.stop()
            raise
    return server


def error_message(r: httpx.Response) -> str:
    """The ``error`` of a JSON error body (BentoML wraps some in a one-element list), else the text."""
    try:
        body = r.json()
    except ValueError:
        return r.text
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return r.text


def leaks(text: str) -> list[str]:
    """The markers of ``LEAK_MARKERS`` found in a response body (an empty list is good)."""
    return [m for m in LEAK_MARKERS if m in text]


def long_tests() -> bool:
    """``TRANSFIGURE_LONG_TESTS=1`` turns on the long variants (>= 1,000 fuzz cases, >= 60 s load)."""
    return os.environ.get("TRANSFIGURE_LONG_TESTS", "").strip().lower() in {"1", "true", "yes", "on"}


def server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing: decode;dur=1.2, infer;dur=50.3`` -> {"decode": 1.2, "infer": 50.3} (ms)."""
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out
