"""`make bench`: run every benchmark in turn, each printing its own table.

    .venv/bin/python tests/benchmarks/run_all.py                 # all
    .venv/bin/python tests/benchmarks/run_all.py serve load      # a subset, by short name

Benchmarks are not tests: they run on demand, report ratios measured side by side in one run, and
never fail a build. Each one is a plain script with its own --help for more options.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "serve": ["serve_bench.py"],  # served latency/throughput vs raw onnxruntime, per zoo model
    "fullres": ["fullres_bench.py"],  # guided translator at 1024 px and 12 MP vs the shipped zoo; memory
    "load": ["load_bench.py", "--duration", "20"],  # capacity, then 1x and 2x of it; RSS over time
    "train": ["train_speed.py", "--steps", "3", "--warmup", "1"],  # CycleGAN it/s, ResNet vs guided
    "sizes": ["translate_sizes.py"],  # translate models in onnxruntime at 256², 1024², 4000x3000
    "ddp": ["ddp_overhead.py", "--steps", "5", "--warmup", "1"],  # CycleGAN 128², 1 x 2 thr vs 2 x 1
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        script, *args = BENCHMARKS[name]
        print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / script), *args])
        print(f"=== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
