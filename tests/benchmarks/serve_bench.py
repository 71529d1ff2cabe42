"""Serving benchmark: the real server against raw onnxruntime on the same models.

For every model in the zoo (or tiny test models when the zoo is empty) it measures
* raw ORT: p50 of one inference on the same input tensor the service would build (offline
  throughput = requests/s of a sequential loop);
* served: p50/p95 latency at concurrency 1, throughput at concurrency 4 and 16, through
  ``bentoml serve`` on 127.0.0.1 (encode/decode and HTTP included), with the server's own split of
  its time from the ``Server-Timing`` header (infer, PNG codec) and what is left (HTTP);
* torch eager fp32 of the same generator (architecture from the card's recipe config, weights
  copied from the ONNX initializers) on the same tensor, when torch is installed;
and prints the ratios. Targets: served p50 <= 1.15x raw ORT, throughput at c16 >= 90 % offline,
256 px translate >= 2.5x faster in ORT than in torch eager.
(Tiny models run in microseconds, so their ratios measure HTTP overhead, not the service.)

    .venv/bin/python tests/benchmarks/serve_bench.py [--models-dir DIR] [--requests 40] [--size 256]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from models import zoo_dir  # noqa: E402
from service import imaging  # noqa: E402
from service.zoo import LoadedModel, Zoo  # noqa: E402
from tests.server_utils import server_timing  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "sr" / "butterfly.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _input_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.open(FIXTURE).convert("RGB").resize((side, side)).save(buf, "PNG")
    return buf.getvalue()


def _request(model: LoadedModel, side: int, n_samples: int) -> tuple[str, dict, dict | None]:
    task = model.card.task
    if task == "sample":
        return "/sample", {"model": model.name, "n": str(n_samples), "seed": "1"}, None
    return f"/{task}", {"model": model.name}, {"image": ("in.png", _input_png(side), "image/png")}


def _raw_feeds(model: LoadedModel, side: int, n_samples: int) -> dict[str, np.ndarray]:
    if model.card.task == "sample":
        return imaging.sample_feeds(model, 0, n_samples, 1)
    assert model.card.input is not None
    rgb = np.asarray(Image.open(io.BytesIO(_input_png(side))).convert("RGB"))
    x = imaging.to_tensor(rgb, model.card.input)
    return {"image": imaging.pad_to_multiple(x, model.card.input.multiple_of, imaging.MIN_TRANSLATE_SIDE)}


def _raw_ort(model: LoadedModel, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    model.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - t0)
    return times


def _torch_net(model: LoadedModel):
    """The card's generator as a torch eager module with the ONNX file's weights, or None.

    The architecture comes from the card's recipe config; weights from the ONNX file's initializers
    (an INT8 file's dequantized ones) via ``training.recipes``. When not every tensor can be matched
    (e.g. a folded batch norm), the net keeps its random init and the label says so: eager timing
    does not depend on the values.
    """
    try:
        import torch

        from training.recipes import net_from_card, onnx_tensors_for
    except ImportError:
        return None, "torch not installed"
    try:
        _, _, net = net_from_card(model.card)
    except (ValueError, TypeError, KeyError) as e:  # e.g. the tiny test models' minimal configs
        return None, f"cannot rebuild the net from the card: {e}"
    net = net.eval()
    state = net.state_dict()
    found = onnx_tensors_for(model.path, state, dequantize=model.card.precision == "int8")
    if len(found) == len(state):
        net.load_state_dict({k: torch.from_numpy(found[k].reshape(v.shape).copy()) for k, v in state.items()})
        return net, "same weights" + (" (dequantized)" if model.card.precision == "int8" else "")
    return net, f"architecture only ({len(found)}/{len(state)} tensors matched)"


def _torch_eager(net, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    import torch

    args = [torch.from_numpy(feeds[k]) for k in feeds]
    times = []
    with torch.inference_mode():
        net(*args)
        for _ in range(runs):
            t0 = time.perf_counter()
            net(*args)
            times.append(time.perf_counter() - t0)
    return times


def _served(
    url: str, req: tuple[str, dict, dict | None], total: int, concurrency: int
) -> tuple[list[float], float, list[dict[str, float]]]:
    """Latencies (s), throughput (req/s) and each answer's Server-Timing stages (ms)."""
    route, data, files = req
    stages: list[dict[str, float]] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post(route, data=data, files=files).raise_for_status()  # warm

        def one(_: int) -> float:
            t0 = time.perf_counter()
            r = client.post(route, data=data, files=files)
            r.raise_for_status()
            stages.append(server_timing(r.headers.get("server-timing")))
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            lat = list(pool.map(one, range(total)))
        return lat, total / (time.perf_counter() - t0), stages


def _median_stage(stages: list[dict[str, float]], *names: str) -> float | None:
    sums = [sum(st[n] for n in names) for st in stages if all(n in st for n in names)]
    return statistics.median(sums) if sums else None


def _p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=40, help="requests per measurement")
    ap.add_argument("--size", type=int, default=256, help="input image side for translate/upscale")
    ap.add_argument("--samples", type=int, default=16, help="n per /sample request")
    ap.add_argument(
        "--workers", type=int, default=None, help="server worker processes (TRANSFIGURE_WORKERS; default 1)"
    )
    ap.add_argument("--threads", type=int, default=None, help="server ORT threads (TRANSFIGURE_THREADS)")
    ap.add_argument(
        "--infer-concurrency",
        type=int,
        default=None,
        help="inferences at once per worker (TRANSFIGURE_INFER_CONCURRENCY; default: the ORT threads)",
    )
    ap.add_argument(
        "--no-sample-batching",
        action="store_true",
        help="run /sample requests directly, not through BentoML's batcher (TRANSFIGURE_SAMPLE_BATCHING=0)",
    )
    args = ap.parse_args()

    root = args.models_dir or zoo_dir()
    zoo = Zoo.load(root)
    if not len(zoo):
        from tests.tiny_models import make_zoo

        root = make_zoo(Path(tempfile.mkdtemp(prefix="tiny-zoo-")))
        zoo = Zoo.load(root)
        print(f"zoo is empty: benchmarking the tiny test models in {root}")

    port = _free_port()
    env = {**os.environ, "TRANSFIGURE_MODELS_DIR": str(root), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("TRANSFIGURE_API_TOKEN", None)
    # throughput at 16 concurrent requests measures capacity, not admission: a slow model's queue
    # would pass the default queueing target and be refused (503); overload_bench measures that
    env.setdefault("TRANSFIGURE_MAX_QUEUE_MS", "600000")
    for var, value in (
        ("TRANSFIGURE_WORKERS", args.workers),
        ("TRANSFIGURE_THREADS", args.threads),
        ("TRANSFIGURE_INFER_CONCURRENCY", args.infer_concurrency),
    ):
        if value:
            env[var] = str(value)
    if args.no_sample_batching:
        env["TRANSFIGURE_SAMPLE_BATCHING"] = "0"
    server = subprocess.Popen(
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    rows, notes = [], []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        for model in zoo:
            feeds = _raw_feeds(model, args.size, args.samples)
            raw = _raw_ort(model, feeds, args.requests)
            raw_p50 = statistics.median(raw) * 1000
            net, weights = _torch_net(model)
            if net is not None:
                eager_p50 = statistics.median(_torch_eager(net, feeds, max(5, args.requests // 4))) * 1000
                eager = (f"{eager_p50:.2f}", f"{eager_p50 / raw_p50:.2f}x")
                notes.append(f"{model.name}: torch eager fp32 on {weights}")
            else:
                eager = ("n/a", "n/a")
                notes.append(f"{model.name}: no torch eager figure ({weights})")
            offline = 1000 / raw_p50
            req = _request(model, args.size, args.samples)
            lat1, _, stages1 = _served(url, req, args.requests, 1)
            _, thr4, _ = _served(url, req, args.requests, 4)
            _, thr16, _ = _served(url, req, args.requests, 16)
            infer = _median_stage(stages1, "infer")
            codec = _median_stage(stages1, "decode", "encode")
            stages_ms = _median_stage(stages1, "decode", "queue", "infer", "encode")
            in_server = (
                (f"{infer:.2f}", f"{codec:.2f}", f"{_p(lat1, 50) - stages_ms:.2f}")
                if infer is not None and codec is not None and stages_ms is not None
                else ("n/a", "n/a", "n/a")
            )
            rows.append(
                (
                    model.name,
                    model.card.task,
                    f"{raw_p50:.2f}",
                    f"{_p(lat1, 50):.2f}",
                    f"{_p(lat1, 95):.2f}",
                    f"{_p(lat1, 50) / raw_p50:.2f}x",
                    *in_server,
                    f"{offline:.1f}",
                    f"{thr4:.1f}",
                    f"{thr16:.1f}",
                    f"{100 * thr16 / offline:.0f}%",
                    *eager,
                )
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    header = (
        "model",
        "task",
        "ORT p50 ms",
        "served p50",
        "served p95",
        "p50 ratio",
        "infer ms",
        "codec ms",
        "HTTP ms",
        "ORT req/s",
        "c4 req/s",
        "c16 req/s",
        "c16/ORT",
        "eager p50",
        "eager/ORT",
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"inputs: {args.size}x{args.size} PNG (translate/upscale), n={args.samples} (sample); {args.requests} requests each; "
        f"server: workers {env.get('TRANSFIGURE_WORKERS', 1)}, ORT threads {env.get('TRANSFIGURE_THREADS', 'CPUs / workers')}, "
        f"inferences at once {env.get('TRANSFIGURE_INFER_CONCURRENCY', 'ORT threads (adaptive lanes)')}, "
        f"/sample batching {'off' if env.get('TRANSFIGURE_SAMPLE_BATCHING') == '0' else 'on'}"
    )
    print(
        "infer / codec ms: medians at c1 of the server's own Server-Timing stages (inference incl. pre/post-"
        "processing; PNG decode + encode); HTTP ms: served p50 - the server's stages (HTTP, multipart, "
        "BentoML, the client on the same cores)"
    )
    for line in notes:
        print(line)
    print("targets: p50 ratio <= 1.15x, c16/ORT >= 90%, eager/ORT >= 2.5x for 256 px translate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
