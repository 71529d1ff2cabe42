"""CycleGAN training speed (it/s) for the reference and the compact configuration, fp32 and bf16.

    .venv/bin/python tests/benchmarks/train_speed.py                  # cuda if available, else cpu
    .venv/bin/python tests/benchmarks/train_speed.py --device cpu --steps 2 --warmup 1

One iteration = one full CycleGAN step (both generators and both discriminators, forward and
backward, image pool), batch 1, on the real yosemite fixture images through the training data
pipeline. Prints a table; each row is a few timed steps after warm-up, so treat it as a rough guide.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.loop import Runtime  # noqa: E402
from training.networks import count_parameters  # noqa: E402
from training.recipes.cyclegan import Config, CycleGAN  # noqa: E402

CONFIGS = {
    "reference 256px ngf64 9blk": {"crop_size": 256, "ngf": 64, "n_blocks": 9},
    "compact 128px ngf32 6blk": {"crop_size": 128, "ngf": 32, "n_blocks": 6},
}


def measure(
    device: str, precision: str, knobs: dict, steps: int, warmup: int, data: Path
) -> tuple[float, int]:
    torch.manual_seed(0)
    rt = Runtime.create(device, precision)
    cfg = Config(data=str(data), device=device, precision=precision, num_workers=0, **knobs)
    recipe = CycleGAN(cfg, rt)
    batches = [b for _, b in zip(range(4), recipe.batches(0), strict=False)]  # decode outside the timing

    def sync() -> None:
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)

    for i in range(warmup):
        recipe.train_step(batches[i % len(batches)], i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        recipe.train_step(batches[i % len(batches)], warmup + i)
    sync()
    return steps / (time.perf_counter() - start), count_parameters(recipe.nets["G_AB"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 20 cuda, 2 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 cuda, 1 cpu)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "yosemite")
    args = p.parse_args()
    device = Runtime.create(args.device, "fp32").device
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    from training.loop import hardware_string

    print(f"# CycleGAN train speed on {hardware_string(device)}, torch {torch.__version__}, batch 1")
    print(f"# {warmup} warm-up + {steps} timed steps per row")
    print(f"| {'config':<28} | {'precision':<9} | {'G params':>9} | {'it/s':>7} | {'s/it':>7} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for name, knobs in CONFIGS.items():
        for precision in args.precisions:
            try:
                rate, params = measure(str(device), precision, knobs, steps, warmup, args.data)
            except Exception as e:  # one unsupported precision must not hide the other rows
                print(f"| {name:<28} | {precision:<9} | {'-':>9} | failed: {e}")
                continue
            print(
                f"| {name:<28} | {precision:<9} | {params / 1e6:>8.2f}M | {rate:>7.2f} | {1 / rate:>7.3f} |"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
