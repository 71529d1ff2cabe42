"""CycleGAN under DDP: 1 process x 2 threads vs 2 processes x 1 thread, steps/s and images/s.

    .venv/bin/python tests/benchmarks/ddp_overhead.py                     # 128 px compact CycleGAN, CPU
    .venv/bin/python tests/benchmarks/ddp_overhead.py --steps 3 --warmup 1 --size 64

On a 2-core machine this measures the overhead of data parallelism, not a speed-up: the same two
cores either run one process with two threads or two processes (gloo, loopback) with one thread
each, and the second pays for the gradient all-reduce and for two copies of every net. Rows:

* ``1 proc x 2 thr, batch 1``: the plain run at the default batch (per-step cost);
* ``1 proc x 2 thr, batch 2``: the plain run at the global batch of the DDP row;
* ``2 proc x 1 thr, batch 1``: torchrun's layout, ``--batch-size 1`` per rank = global batch 2.

One step = one full CycleGAN step (both generators, both discriminators, forward and backward, the
image pool) on the yosemite fixture through the training data pipeline (decoded before timing),
exactly as ``training.loop`` runs it (DDP wrappers and per-rank batch slices included). Every row
runs in fresh processes started the way torchrun starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# (label, processes, threads per process, batch per process)
ROWS = [
    ("1 proc x 2 thr, batch 1", 1, 2, 1),
    ("1 proc x 2 thr, batch 2", 1, 2, 2),
    ("2 proc x 1 thr, batch 1", 2, 1, 1),
]


def worker(spec: dict) -> None:
    """One rank: build the recipe, wrap it as the loop does, time ``steps`` steps, print JSON."""
    import torch

    torch.set_num_threads(spec["threads"])
    from training import distributed
    from training.loop import Runtime, seed_everything
    from training.recipes.cyclegan import Config, CycleGAN

    ctx = distributed.init_from_env()
    seed_everything(distributed.rank_seed(0, ctx.rank))
    rt = Runtime.create("cpu", spec["precision"])
    cfg = Config(
        data=spec["data"], crop_size=spec["size"], ngf=32, n_blocks=6, batch_size=spec["batch"],
        device="cpu", precision=spec["precision"], num_workers=0,
    )  # fmt: skip
    recipe = CycleGAN(cfg, rt)
    if ctx.distributed:
        distributed.wrap_recipe(recipe, rt.device)
    stream = recipe.batches(0)  # this rank's slice of each global batch
    batches = [next(stream) for _ in range(4)]
    for i in range(spec["warmup"]):
        recipe.train_step(batches[i % len(batches)], i)
    ctx.barrier()
    start = time.perf_counter()
    for i in range(spec["steps"]):
        recipe.train_step(batches[i % len(batches)], spec["warmup"] + i)
    ctx.barrier()
    elapsed = time.perf_counter() - start
    print(json.dumps({"rank": ctx.rank, "elapsed": elapsed}), flush=True)
    ctx.close()


def run_row(procs: int, threads: int, batch: int, args: argparse.Namespace) -> float:
    """Seconds for ``args.steps`` steps (the slowest rank) of one layout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    spec = {"threads": threads, "batch": batch, "size": args.size, "steps": args.steps, "warmup": args.warmup,
            "precision": args.precision, "data": str(args.data)}  # fmt: skip
    children = []
    for rank in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
        children.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    elapsed = []
    for child in children:
        out, _ = child.communicate(timeout=args.timeout)
        if child.returncode != 0:
            raise RuntimeError(f"a rank exited {child.returncode}")
        elapsed.append(json.loads(out.strip().splitlines()[-1])["elapsed"])
    return max(elapsed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--size", type=int, default=128, help="training crop (px)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "yosemite")
    p.add_argument("--timeout", type=float, default=900, help="seconds a row may take")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    import torch

    from training.loop import hardware_string

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# CycleGAN (compact: ngf 32, 6 blocks) at {args.size} px, {args.precision}, DDP over gloo on "
          f"{hardware_string(torch.device('cpu')).split(' (')[0]}, {cpus} CPUs, torch {torch.__version__}")  # fmt: skip
    print(
        f"# {args.warmup} warm-up + {args.steps} timed steps per row. With as many threads in all as cores,"
    )
    print("# this is the overhead of data parallelism (all-reduce, two copies of each net), not a speed-up.")
    print(
        f"| {'layout':<24} | {'global batch':>12} | {'steps/s':>8} | {'images/s':>8} | {'images/s vs 1x2, b2':>19} |"
    )
    print(f"|{'-' * 26}|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 21}|")
    rates = {}
    for label, procs, threads, batch in ROWS:
        seconds = run_row(procs, threads, batch, args)
        steps_s = args.steps / seconds
        rates[label] = images_s = steps_s * procs * batch
        base = rates.get("1 proc x 2 thr, batch 2")
        ratio = f"{images_s / base:.2f}x" if base else "-"
        print(
            f"| {label:<24} | {procs * batch:>12} | {steps_s:>8.3f} | {images_s:>8.3f} | {ratio:>19} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
