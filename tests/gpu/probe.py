"""The measuring half of the GPU check (``tests/gpu/check.py`` runs it with the check's Python).

Each subcommand prints one JSON object on its last line of stdout:

* ``env`` — torch, CUDA, the GPU, onnxruntime and its providers, the onnxruntime packages installed.
* ``parity ZOO`` — every model folder under ZOO run with onnxruntime's CUDA provider and with its
  CPU provider on the same inputs: the largest absolute difference per model.
* ``latency ZOO`` — every model's median onnxruntime time on CUDA and on the CPU (native size).
* ``serve URL`` — one request per endpoint (per model of its task) to a running service: status,
  median latency of a few requests, and each model's provider from ``/models``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
TRANSLATE_IMAGE = REPO / "tests" / "fixtures" / "yosemite" / "testA"
UPSCALE_IMAGE = REPO / "tests" / "fixtures" / "sr" / "head.png"


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result))


def env() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        import torch

        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
        if out["cuda"]:
            out.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported())
    except ImportError as e:
        out["torch_error"] = str(e)
    try:
        import onnxruntime as ort

        out.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError as e:
        out["onnxruntime_error"] = str(e)
    try:
        import bentoml

        out["bentoml"] = bentoml.__version__
    except ImportError as e:
        out["bentoml_error"] = str(e)
    from service.providers import installed_runtime_packages

    out["runtime_packages"] = installed_runtime_packages()
    return out


def _models(zoo: Path) -> list[Any]:
    from service.zoo import load_model

    return [load_model(p) for p in sorted(zoo.glob("*/card.json"))]


def _feeds(model: Any, side: int | None = None) -> dict[str, Any]:
    import numpy as np

    feeds = model.warmup_feeds(batch=2 if model.task == "sample" else 1)
    rng = np.random.default_rng(0)
    out = {}
    for name, value in feeds.items():
        if value.dtype == np.float32:
            shape = value.shape if side is None or value.ndim != 4 else (*value.shape[:2], side, side)
            lo, hi = model.card.input.range if model.card.input else (-1.0, 1.0)
            out[name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
        else:
            out[name] = np.arange(value.shape[0], dtype=np.int64) % len(model.card.classes or [0])
    return out


def _session(path: Path, provider: str) -> Any:
    import onnxruntime as ort

    providers = [provider, CPU] if provider == CUDA else [CPU]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=providers)
    return session


def parity(zoo: Path, tolerance: float, device: str = CUDA) -> dict[str, Any]:
    """``device``'s session against the CPU's; ``device`` CPU rehearses the check without a GPU."""
    import numpy as np

    rows = []
    for model in _models(zoo):
        feeds = _feeds(model)
        dev, cpu = _session(model.path, device), _session(model.path, CPU)
        a, b = dev.run(["output"], feeds)[0], cpu.run(["output"], feeds)[0]
        diff = float(np.abs(a - b).max())
        rows.append(
            {"model": model.name, "precision": model.card.precision, "device_session": dev.get_providers()[0],
             "max_abs_diff": diff, "mean_abs_diff": float(np.abs(a - b).mean()), "tolerance": tolerance,
             "ok": dev.get_providers()[0] == device and diff <= tolerance}
        )  # fmt: skip
    return {"parity": rows, "ok": bool(rows) and all(r["ok"] for r in rows)}


def _median_ms(session: Any, feeds: dict[str, Any], repeats: int) -> float:
    session.run(["output"], feeds)  # warm-up (cuDNN algorithm choice, arena growth)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(["output"], feeds)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def latency(zoo: Path, side: int, repeats: int, device: str = CUDA) -> dict[str, Any]:
    rows = []
    for model in _models(zoo):
        feeds = _feeds(model, None if model.task == "sample" else side)
        row: dict[str, Any] = {"model": model.name, "precision": model.card.precision, "side": side}
        for provider, key in ((device, "device_ms"), (CPU, "cpu_ms")):
            try:
                session = _session(model.path, provider)
                row[key] = _median_ms(session, feeds, repeats)
                row[key.replace("_ms", "_session")] = session.get_providers()[0]
            except Exception as e:  # report and go on: one model must not hide the others
                row[key + "_error"] = str(e)[:200]
        rows.append(row)
    ok = all("device_ms" in r and "cpu_ms" in r and r["device_session"] == device for r in rows)
    return {"latency": rows, "ok": ok}


def serve(url: str, repeats: int) -> dict[str, Any]:
    import httpx
    from PIL import Image

    photo = sorted(TRANSLATE_IMAGE.glob("*.jpg"))[0].read_bytes()
    small = io.BytesIO()
    Image.open(UPSCALE_IMAGE).convert("RGB").resize((128, 128)).save(small, "PNG")
    rows = []
    with httpx.Client(base_url=url, timeout=120) as http:
        listing = http.get("/models").json()
        for card in listing["models"]:
            name, task = card["name"], card["task"]
            if task == "sample":
                request = {"json": {"model": name, "label": 0, "n": 16, "seed": 1}}
            else:
                image = ("a.jpg", photo) if task == "translate" else ("a.png", small.getvalue())
                request = {"data": {"model": name}, "files": {"image": image}}

            def call(task: str = task, request: dict[str, Any] = request) -> httpx.Response:
                return http.post(f"/{task}", **request)

            first = call()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                r = call()
                times.append((time.perf_counter() - t) * 1000)
                first = first if first.status_code != 200 else r
            rows.append(
                {"model": name, "endpoint": f"/{task}", "status": first.status_code,
                 "provider": card.get("provider"), "served_file": card.get("served_file"),
                 "median_ms": statistics.median(times), "ok": first.status_code == 200}
            )  # fmt: skip
    return {"serve": rows, "unavailable": listing.get("unavailable", {}), "ok": all(r["ok"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env")
    q = sub.add_parser("parity")
    q.add_argument("zoo", type=Path)
    q.add_argument("--tolerance", type=float, required=True)
    q.add_argument("--device", choices=(CUDA, CPU), default=CUDA)
    q = sub.add_parser("latency")
    q.add_argument("zoo", type=Path)
    q.add_argument("--device", choices=(CUDA, CPU), default=CUDA)
    q.add_argument("--side", type=int, default=512)
    q.add_argument("--repeats", type=int, default=10)
    q = sub.add_parser("serve")
    q.add_argument("url")
    q.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.command == "env":
        _emit(env())
    elif args.command == "parity":
        _emit(parity(args.zoo, args.tolerance, args.device))
    elif args.command == "latency":
        _emit(latency(args.zoo, args.side, args.repeats, args.device))
    else:
        _emit(serve(args.url, args.repeats))


if __name__ == "__main__":
    main()
