"""The truncation curve of a style-based cGAN run: judge accuracy and within-class diversity per psi.

    python scripts/truncation_curve.py runs/ab_quickdraw_style --judge runs/zoo_quickdraw_classifier \
        [--psi 1 0.8 0.6 0.4 0.2] [--limit N] [--out docs/design/truncation_curve.md]

For every psi it runs ``transfigure evaluate RUN --judge JUDGE --truncation PSI`` (the same code, in
this process: ``RUN/eval/<data>_psi<PSI>.json``), then prints one markdown table: the share of samples
the judge assigns to their class, its lowest class, and the mean within-class diversity of the
samples (mean pairwise distance of judge features) against that of the real test images. The last
line says whether accuracy rises and diversity falls monotonically as psi falls. ``--out`` also
writes the table to a file (e.g. for the docs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from training.evaluate import EvalOptions, evaluate_run


def measure(run: str, judge: str, psi: float, limit: int | None) -> dict[str, float]:
    command = f"transfigure evaluate {shlex.quote(run)} --judge {shlex.quote(judge)} --truncation {psi:g}"
    if limit:
        command += f" --limit {limit}"
    path = evaluate_run(run, options=EvalOptions(limit=limit, truncation=psi), judge=judge, command=command)
    metrics = {m["name"]: m["value"] for m in json.loads(path.read_text())["metrics"]}
    per_class = [v for k, v in metrics.items() if k.startswith("judge_accuracy_samples_")]
    return {
        "psi": psi,
        "accuracy": metrics["judge_accuracy_samples"],
        "worst_class": min(per_class),
        "diversity": float(np.mean([v for k, v in metrics.items() if k.startswith("diversity_samples_")])),
        "diversity_real": float(np.mean([v for k, v in metrics.items() if k.startswith("diversity_real_")])),
    }


def table(rows: list[dict[str, float]], run: str, judge: str) -> str:
    lines = [
        f"Truncation curve of `{run}` (judge: `{judge}`)",
        "",
        "| psi | judge accuracy | lowest class | diversity of samples | diversity of real test images |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['psi']:g} | {r['accuracy']:.3f} | {r['worst_class']:.3f} | {r['diversity']:.3f} "
            f"| {r['diversity_real']:.3f} |"
        )
    by_psi = sorted(rows, key=lambda r: -r["psi"])  # psi falling
    acc = [r["accuracy"] for r in by_psi]
    div = [r["diversity"] for r in by_psi]
    rising = all(b >= a for a, b in zip(acc, acc[1:], strict=False))
    falling = all(b <= a for a, b in zip(div, div[1:], strict=False))
    lines += [
        "",
        f"As psi falls: judge accuracy {'rises monotonically' if rising else 'does NOT rise monotonically'}, "
        f"diversity {'falls monotonically' if falling else 'does NOT fall monotonically'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a `transfigure train cgan --generator style` run folder")
    p.add_argument("--judge", required=True, help="the classifier run that judges the samples")
    p.add_argument(
        "--psi", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.2], help="truncation values"
    )
    p.add_argument("--limit", type=int, default=None, help="at most N test images per class (quick checks)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    rows = [measure(args.run, args.judge, psi, args.limit) for psi in args.psi]
    text = table(rows, args.run, args.judge)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
