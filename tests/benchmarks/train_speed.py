"""CycleGAN training speed (it/s): full-resolution ResNet vs the guided translator, and CPU levers.

    .venv/bin/python tests/benchmarks/train_speed.py                  # cuda if available, else cpu
    .venv/bin/python tests/benchmarks/train_speed.py --device cpu --steps 3 --warmup 1
    .venv/bin/python tests/benchmarks/train_speed.py --rows compact guided guided+cl --precisions bf16

One iteration = one full CycleGAN step (both generators and both discriminators, forward and
backward, image pool), batch 1, on the real yosemite fixture images through the training data
pipeline. Rows are measured one after the other in one process with the same thread count, so their
ratios are what to read; each row is a few timed steps after warm-up. ``+cl`` rows put nets and
images in channels_last; ``+compile`` rows wrap every net in ``torch.compile`` (its compile time is
in the warm-up, not in the rate).
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

GUIDED = {"generator": "guided", "crop_size": 256, "low_size": 128, "d_size": 128, "ngf": 32,
          "n_blocks": 6, "upsample": "resize"}  # fmt: skip
ROWS = {
    "reference": ("reference 256px ngf64 9blk", {"crop_size": 256, "ngf": 64, "n_blocks": 9}, ()),
    "compact": ("compact 128px ngf32 6blk", {"crop_size": 128, "ngf": 32, "n_blocks": 6}, ()),
    "guided": ("guided 256px, net 128, D 128", GUIDED, ()),
    "guided-d256": ("guided 256px, net 128, D 256", {**GUIDED, "d_size": None}, ()),
    "guided-96": ("guided 256px, net 96, D 128", {**GUIDED, "low_size": 96}, ()),
    "guided+cl": ("guided + channels_last", GUIDED, ("channels_last",)),
    "guided+compile": ("guided + torch.compile", GUIDED, ("compile",)),
}
DEFAULT_ROWS = ["compact", "guided", "guided-d256", "guided-96", "guided+cl"]


def measure(device: str, precision: str, knobs: dict, levers: tuple[str, ...], steps: int, warmup: int,
            data: Path) -> tuple[float, int]:  # fmt: skip
    torch.manual_seed(0)
    rt = Runtime.create(device, precision)
    cfg = Config(data=str(data), device=device, precision=precision, num_workers=0, **knobs)
    recipe = CycleGAN(cfg, rt)
    params = count_parameters(recipe.nets["G_AB"])
    batches = [b for _, b in zip(range(4), recipe.batches(0), strict=False)]  # decode outside the timing
    if "channels_last" in levers:
        for net in recipe.nets.values():
            net.to(memory_format=torch.channels_last)
        batches = [{k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4
                    else v for k, v in b.items()} for b in batches]  # fmt: skip
    if "compile" in levers:
        recipe.nets = {k: torch.compile(v) for k, v in recipe.nets.items()}

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
    return steps / (time.perf_counter() - start), params


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 20 cuda, 3 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 cuda, 1 cpu)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS), help="configurations")
    p.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "yosemite")
    args = p.parse_args()
    device = Runtime.create(args.device, "fp32").device
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    from training.loop import hardware_string

    print(f"# CycleGAN train speed on {hardware_string(device)}, torch {torch.__version__}, batch 1")
    print(f"# {warmup} warm-up + {steps} timed steps per row; 'vs first' = it/s over the first row's")
    print(
        f"| {'config':<30} | {'precision':<9} | {'G params':>9} | {'it/s':>7} | {'s/it':>7} | {'vs first':>8} |"
    )
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    first: float | None = None
    for key in args.rows:
        name, knobs, levers = ROWS[key]
        for precision in args.precisions:
            try:
                rate, params = measure(str(device), precision, knobs, levers, steps, warmup, args.data)
            except Exception as e:  # one unsupported lever must not hide the other rows
                print(f"| {name:<30} | {precision:<9} | {'-':>9} | failed: {type(e).__name__}: {e}")
                continue
            first = first or rate
            print(f"| {name:<30} | {precision:<9} | {params / 1e6:>8.2f}M | {rate:>7.2f} | {1 / rate:>7.3f} "
                  f"| {rate / first:>7.2f}x |")  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
