"""Where a guided translator inverts a photo's local contrast: the share of pixels with a negative gain.

    .venv/bin/python tests/benchmarks/guided_gain.py runs/zoo_photo2monet \\
        --photos ../shared/data/monet_kaggle/photo_jpg --every 10

The guided translator's output is ``x + a * x + b`` per channel, so ``1 + a`` is each channel's
local gain; a gain below zero turns bright into dark, and channels that invert differently paint
rainbow fringes along bright edges. For each run (the G_AB generator, EMA weights) and each photo
(the held-out ones: every Nth file by name), the coefficients are computed on the network's
low-resolution copy; the table gives the share of those pixels where some channel's gain is below
zero, the lowest gain, the spread of the three channels' gains (max - min; its mean and 99th
percentile: where the channels' gains differ, a white highlight turns into a colour), and the mean
absolute change at low resolution.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np
    import torch
    from PIL import Image

    from training.recipes import load_run

    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders of guided translators")
    p.add_argument("--photos", type=Path, required=True, help="a folder of photos")
    p.add_argument("--every", type=int, default=10, help="every Nth file by name (the held-out split)")
    p.add_argument("--net", default="G_AB")
    args = p.parse_args()
    files = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = files[:: args.every]
    print(f"{len(files)} photos from {args.photos}")
    print(
        "| run | step | pixels with a negative gain | lowest gain | gain spread mean | p99 | mean abs change |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        loaded = load_run(run)
        net = loaded.nets[args.net]
        inverted, lowest, change, n, spreads = 0.0, float("inf"), 0.0, 0, []
        with torch.no_grad():
            for f in files:
                img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
                x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
                delta, a, _ = net.coefficients(net.low(x))
                gain = 1.0 + a
                inverted += float((gain.min(dim=1).values < 0).float().mean())
                lowest = min(lowest, float(gain.min()))
                spreads.append((gain.max(dim=1).values - gain.min(dim=1).values).flatten())
                change += float(delta.abs().mean())
                n += 1
        spread = torch.cat(spreads)
        print(
            f"| {run} | {loaded.step} | {100 * inverted / n:.2f} % | {lowest:.2f} | {float(spread.mean()):.3f} "
            f"| {float(torch.quantile(spread[:: max(1, spread.numel() // 500_000)], 0.99)):.3f} | {change / n:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
