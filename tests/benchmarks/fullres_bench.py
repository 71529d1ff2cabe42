"""Full-resolution translation: a resolution-free translator served end to end against the shipped zoo.

Rows (one server, one worker, ``--threads`` ORT threads, the service's default limits):

* **1024x1024**: p50 of ``POST /translate`` end to end with the translator under test, PNG in and
  out (the default format) and JPEG in and out, beside p50 of a full-resolution ``--baseline`` (by
  default the compact ResNet CycleGAN generator the guided translators replaced, fp32) run raw in onnxruntime at 1024x1024 on the same threads, and
  their ratios (goal: >= 10x faster);
* **4000x3000**: p50 of a 12-MP JPEG request answered as JPEG (``format=jpeg``) end to end
  (goal: <= 2 s on 2 cores), and one answered as PNG, with the server's ``Server-Timing`` split
  (decode / queue / infer / encode): PNG encoding of 12 MP is what the JPEG and WebP answers avoid;
* **8 x 12 MP at once**: statuses (503 = refused by the pixel budget of requests in flight,
  ``TRANSFIGURE_MAX_PIXELS_IN_FLIGHT``), wall time and the worker's peak RSS (``VmHWM``).

``--model-dir`` takes a model folder (``card.json`` + ``model.onnx``), e.g. a trained guided
translator; without it, an untrained ``GuidedTranslator`` with a perturbed head is exported to a
temporary folder (needs torch; its speed is that of a trained one, its output is not).

    .venv/bin/python tests/benchmarks/fullres_bench.py [--model-dir models/NAME] [--requests 20]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.card import IMAGE_INPUT, OUTPUT, ModelCard  # noqa: E402
from tests.server_utils import server_timing, start_server  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "sr" / "butterfly.png"
LARGE = (4000, 3000)
STAGES = ("decode", "queue", "infer", "encode")


def photo(size: tuple[int, int], fmt: str, seed: int = 0) -> bytes:
    """A photo-like test image: the fixture resized, plus mild noise (sensor grain, so that codecs
    work as hard as on a real photo rather than on a smooth upscale)."""
    rgb = np.asarray(Image.open(FIXTURE).convert("RGB").resize(size, Image.Resampling.BICUBIC))
    noise = np.random.default_rng(seed).integers(-6, 7, rgb.shape, dtype=np.int16)
    im = Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def vm_kib(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def raw_ort_p50(onnx_path: Path, side: int, runs: int, threads: int) -> float:
    """p50 seconds of one inference on a 1 x 3 x side x side input in onnxruntime (after a warm-up)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    rgb = np.asarray(Image.open(io.BytesIO(photo((side, side), "PNG"))))
    x = np.ascontiguousarray((rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])
    sess.run([OUTPUT], {IMAGE_INPUT: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run([OUTPUT], {IMAGE_INPUT: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def served(client: httpx.Client, data: bytes, name: str, model: str, runs: int, **fields: str):
    """p50 seconds end to end and the median Server-Timing stages (ms) of ``runs`` requests."""
    files = {"image": (name, data)}
    form = {"model": model, **fields}
    client.post("/translate", files=files, data=form).raise_for_status()  # warm this size
    times, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.post("/translate", files=files, data=form)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        stages.append(server_timing(r.headers.get("server-timing")))
    split = {s: statistics.median(st.get(s, 0.0) for st in stages) for s in STAGES}
    return statistics.median(times), split, r


def burst(url: str, data: bytes, model: str, n: int) -> tuple[Counter, float, list[httpx.Response]]:
    """``n`` requests at once, one connection each; statuses and wall time."""

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=300) as c:
            return c.post(
                "/translate", files={"image": ("p.jpg", data)}, data={"model": model, "format": "jpeg"}
            )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    return Counter(r.status_code for r in answers), time.perf_counter() - t0, answers


def _split(st: dict[str, float]) -> str:
    return " / ".join(f"{st[s]:.0f}" for s in STAGES)


def resnet_baseline(path: Path) -> Path:
    """The compact full-resolution ResNet generator (ngf 32, 6 blocks) as a dynamic-size ONNX file."""
    import torch

    from training.networks import ResnetGenerator

    net = ResnetGenerator(ngf=32, n_blocks=6).eval()
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=[IMAGE_INPUT],
                      output_names=[OUTPUT], dynamic_axes={IMAGE_INPUT: axes, OUTPUT: axes}, opset_version=18,
                      dynamo=False)  # fmt: skip
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model-dir", type=Path, default=None,
        help="model folder to serve, e.g. models/summer2winter (default: an untrained guided translator)",
    )  # fmt: skip
    ap.add_argument(
        "--baseline", type=Path, default=None,
        help="a full-resolution model folder (default: the compact ResNet CycleGAN generator, ngf 32, "
        "6 blocks, fp32, untrained: the design the guided translators replaced; speed needs no weights)",
    )  # fmt: skip
    ap.add_argument("--requests", type=int, default=20, help="requests per 1024x1024 measurement")
    ap.add_argument("--large-requests", type=int, default=5, help="requests per 4000x3000 measurement")
    ap.add_argument(
        "--baseline-runs", type=int, default=3, help="raw ORT runs of the baseline (seconds each)"
    )
    ap.add_argument("--concurrent", type=int, default=8, help="12-MP requests sent at once")
    ap.add_argument("--threads", type=int, default=2, help="ORT threads, server and baseline alike")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fullres-bench-"))
    try:
        zoo = work / "zoo"
        if args.model_dir is None:
            from tests.tiny_models import make_guided_model

            folder = make_guided_model(zoo)
            what = "untrained GuidedTranslator (perturbed head), exported by tests/tiny_models.py"
        else:
            folder = zoo / args.model_dir.resolve().name
            shutil.copytree(args.model_dir, folder)
            what = str(args.model_dir)
        card = ModelCard.load(folder)
        if args.baseline is None:
            base_path, base_what = (
                resnet_baseline(work / "resnet.onnx"),
                "compact ResnetGenerator, fp32, untrained",
            )
        else:
            base_card = ModelCard.load(args.baseline)
            base_path = args.baseline / base_card.onnx_file
            base_what = f"{base_card.name} ({base_card.architecture}, {base_card.precision})"
        base_p50 = raw_ort_p50(base_path, 1024, args.baseline_runs, args.threads)

        with start_server(zoo, work / "server", TRANSFIGURE_THREADS=str(args.threads)) as server:
            (pid,) = server.worker_pids()
            idle_kib = vm_kib(pid, "VmRSS")
            with httpx.Client(base_url=server.url, timeout=300) as client:
                p50_1k, split_1k, _ = served(
                    client, photo((1024, 1024), "PNG"), "p.png", card.name, args.requests
                )
                p50_1k_jpeg, split_1k_jpeg, _ = served(
                    client, photo((1024, 1024), "JPEG"), "p.jpg", card.name, args.requests, format="jpeg"
                )
                large = photo(LARGE, "JPEG")
                p50_jpeg, split_jpeg, r = served(
                    client, large, "p.jpg", card.name, args.large_requests, format="jpeg"
                )
                assert Image.open(io.BytesIO(r.content)).size == LARGE, "the answer is not 4000x3000"
                p50_png, split_png, _ = served(client, large, "p.jpg", card.name, 1, format="png")
                p50_webp, split_webp, _ = served(client, large, "p.jpg", card.name, 1, format="webp")
            before_burst_kib = vm_kib(pid, "VmHWM")
            statuses, wall, answers = burst(server.url, large, card.name, args.concurrent)
            peak_kib = vm_kib(pid, "VmHWM")
            alive = server.alive()
            refused = next((r for r in answers if r.status_code == 503), None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"model under test: {card.name}: {what} ({card.architecture}); baseline: {base_what}")
    print(f"{args.threads} ORT threads; Server-Timing split in ms: decode / queue / infer / encode")
    rows = [
        ("row", "value", "split / detail"),
        (
            "baseline raw ORT 1024x1024 p50",
            f"{base_p50 * 1000:.0f} ms",
            f"{args.baseline_runs} runs",
        ),
        (f"{card.name} served /translate 1024x1024 PNG p50", f"{p50_1k * 1000:.0f} ms", _split(split_1k)),
        ("ratio (baseline raw / served PNG)", f"{base_p50 / p50_1k:.1f}x", "goal >= 10x"),
        (
            f"{card.name} served /translate 1024x1024 JPEG p50",
            f"{p50_1k_jpeg * 1000:.0f} ms",
            _split(split_1k_jpeg),
        ),
        ("ratio (baseline raw / served JPEG)", f"{base_p50 / p50_1k_jpeg:.1f}x", "goal >= 10x"),
        (
            "4000x3000 JPEG -> JPEG p50",
            f"{p50_jpeg * 1000:.0f} ms",
            f"{_split(split_jpeg)} (goal <= 2000 ms)",
        ),
        ("4000x3000 JPEG -> WebP", f"{p50_webp * 1000:.0f} ms", _split(split_webp)),
        ("4000x3000 JPEG -> PNG", f"{p50_png * 1000:.0f} ms", _split(split_png)),
        (
            f"{args.concurrent} x 12 MP at once",
            f"{wall:.1f} s",
            ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())) + ("" if alive else "; WORKER DEAD"),
        ),
        (
            "worker peak RSS (VmHWM)",
            f"{peak_kib / 1024:.0f} MiB",
            f"idle {idle_kib / 1024:.0f} MiB; peak before the burst {before_burst_kib / 1024:.0f} MiB",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2]}")
    if refused is not None:
        print(
            f"a refused request's answer: 503, Retry-After {refused.headers.get('retry-after')}: {refused.text[:200]}"
        )
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
