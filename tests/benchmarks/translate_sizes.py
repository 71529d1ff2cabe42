"""Translate models at the sizes users send: onnxruntime latency at 256², 1024² and 4000x3000.

    .venv/bin/python tests/benchmarks/translate_sizes.py                       # every translate model
    .venv/bin/python tests/benchmarks/translate_sizes.py models/summer2winter /tmp/old/summer2winter
    .venv/bin/python tests/benchmarks/translate_sizes.py --sizes 256x256 1024x1024 --repeats 5

For each model folder (card + ONNX file, as the service loads them): parameters and MACs at 256²
from the card, then the median of ``--repeats`` warm runs of the raw ONNX session (the service's
own thread count, 2 by default) at each size, padded to the model's multiple as the service pads.
Models are timed one after the other in one process, so the columns compare side by side. A size a
model cannot finish within ``--budget-s`` (one run) is reported as skipped instead of timed. A
network that runs at full resolution (``multiple_of`` > 1) needs ~1 GB per megapixel in
onnxruntime: above ``--fullres-max-mp`` it is not run, and its time is extrapolated linearly in the
pixel count from the largest size it ran (marked ``~``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from models.card import ModelCard  # noqa: E402


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_model(folder: Path, sizes: list[tuple[int, int]], threads: int, repeats: int, budget_s: float,
               fullres_max_mp: float):  # fmt: skip
    card = ModelCard.load(folder)
    sess = _session(folder / card.onnx_file, threads)
    name = sess.get_inputs()[0].name
    m = card.input.multiple_of
    lo, hi = card.input.range
    rng = np.random.default_rng(0)
    row: list[float | str | None] = []
    largest: tuple[int, float] | None = None  # (pixels, seconds) of the largest size timed
    for h, w in sizes:
        ph, pw = -(-h // m) * m, -(-w // m) * m
        if m > 1 and ph * pw > fullres_max_mp * 1e6:
            row.append(f"~{largest[1] * ph * pw / largest[0] * 1000:.0f}" if largest else None)
            continue
        x = (rng.random((1, 3, ph, pw), dtype=np.float32) * (hi - lo) + lo).astype(np.float32)
        start = time.perf_counter()
        sess.run(None, {name: x})  # warm-up, and the budget check
        first = time.perf_counter() - start
        if first > budget_s:
            row.append(None)
            continue
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            sess.run(None, {name: x})
            runs.append(time.perf_counter() - start)
        row.append(statistics.median(runs))
        largest = (ph * pw, row[-1])
    return card, row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path, help="model folders (default: every translate model)")
    p.add_argument("--sizes", nargs="+", default=["256x256", "1024x1024", "3000x4000"], help="HxW")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=60.0, help="skip a size whose first run takes longer")
    p.add_argument(
        "--fullres-max-mp", type=float, default=2.5, help="largest full-resolution run, megapixels"
    )
    args = p.parse_args()
    folders = args.models or [
        d for d in sorted((ROOT / "models").iterdir())
        if (d / "card.json").is_file() and ModelCard.load(d).task == "translate"
    ]  # fmt: skip
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    print(f"# onnxruntime {ort.__version__}, {args.threads} threads, median of {args.repeats} warm runs")
    head = " | ".join(f"{h}x{w} ms" for h, w in sizes)
    print(f"| model | architecture | params | MACs @256² | {head} |")
    print("|---|---|---|---|" + "---|" * len(sizes))
    for folder in folders:
        card, row = time_model(folder, sizes, args.threads, args.repeats, args.budget_s, args.fullres_max_mp)
        cells = " | ".join(
            "skipped" if t is None else t if isinstance(t, str) else f"{t * 1000:.0f}" for t in row
        )
        macs = f"{card.macs_256 / 1e9:.2f} G" if card.macs_256 else "-"
        print(f"| {folder.name} | {card.architecture} | {card.parameters / 1e6:.2f} M | {macs} | {cells} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
