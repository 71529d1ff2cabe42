"""Translator designs at equal wall time: train each arm, then measure every checkpoint.

    .venv/bin/python tests/benchmarks/translator_ab.py --data ../shared/data/monet_kaggle \\
        --a-dir photo_jpg --b-dir monet_jpg --budget-s 420 --out runs/ab

Every arm is the same guided CycleGAN translator (the shipped translators' generator settings, and
``--lr-g``) with another learning signal: the PatchGAN from scratch, a projected discriminator on
frozen EfficientNet-Lite0 features, the Lite0 feature-statistics loss, or both. Each arm's step
time is measured first (a few steps in this process, after warm-up), and the arm trains for
``budget / step time`` steps, so every arm gets the same CPU time; the curve's time axis is the
step times that measured step time (the runs' own clocks also count whatever else ran meanwhile). Arms run one after another on
the whole machine. Then every saved checkpoint is evaluated on the held-out split (the run's PyTorch
generator, each test image at its own size): FID, the Inception judge and the independent CNN
judge. The judge shares go to each run's TensorBoard (``judge/*`` against the step, wall time as
the event time) and to ``OUT/curve.png`` (judge share against training seconds); the last
checkpoint of each arm makes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GENERATOR = ["--generator", "guided", "--size", "256", "--low-size", "128", "--d-size", "128",
             "--upsample", "resize", "--ngf", "32", "--blocks", "6", "--lambda-cycle", "3",
             "--lambda-identity", "0", "--detail", "--ema-decay", "0.999", "--num-workers", "1"]  # fmt: skip
ARMS = {
    "patch": [],
    "projected": ["--discriminator", "projected", "--lr-d", "1e-4"],
    "style": ["--lambda-style", "1", "--lambda-content", "1"],
    "projected_style": [
        "--discriminator",
        "projected",
        "--lr-d",
        "1e-4",
        "--lambda-style",
        "1",
        "--lambda-content",
        "1",
    ],  # fmt: skip
}


def step_time(argv: list[str], warmup: int = 3, steps: int = 10) -> float:
    """Seconds per training step of the recipe configured by ``argv`` (measured in this process)."""
    import torch

    from training.config import config_from_args
    from training.loop import Runtime
    from training.recipes import cyclegan

    parser = argparse.ArgumentParser()
    cyclegan.add_arguments(parser)
    cfg, _ = config_from_args(cyclegan.Config, parser.parse_args(argv))
    torch.manual_seed(0)
    recipe = cyclegan.CycleGAN(cfg, Runtime.create(cfg.device, cfg.precision))
    stream = recipe.batches(0)
    for i in range(warmup):
        recipe.train_step(next(stream), i)
    start = time.perf_counter()
    for i in range(steps):
        recipe.train_step(next(stream), warmup + i)
    return (time.perf_counter() - start) / steps


def evaluate_checkpoints(run: Path, feature_cache: Path) -> list[dict]:
    """FID and both judges' target share of the run's G_AB at every checkpoint, in step order."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from training.cli import main as cli

    rows = []
    writer = SummaryWriter(str(run / "tb"))
    started = (run / "config.json").stat().st_mtime  # event times: training start + training seconds
    for ckpt in sorted((run / "checkpoints").glob("step_*.pt")):
        out = run / "eval_curve" / ckpt.stem
        if not (out / "curve.json").is_file():
            rc = cli(
                [
                    "evaluate",
                    str(ckpt),
                    "--out",
                    str(out),
                    "--name",
                    "curve",
                    "--feature-cache",
                    str(feature_cache),
                ]
            )
            if rc:
                raise SystemExit(f"evaluating {ckpt} failed ({rc})")
        report = json.loads((out / "curve.json").read_text())
        meta = torch.load(ckpt, map_location="cpu", weights_only=False)
        values = {m["name"]: m["value"] for m in report["metrics"] if m.get("net", "G_AB") == "G_AB"}
        tag = next(k[len("fid_") :] for k in values if k.startswith("fid_") and "identity" not in k)
        row = {"step": int(meta["step"]), "wall_s": float(meta["wall_time_s"]), "fid": values[f"fid_{tag}"],
               "fid_identity": values[f"fid_identity_{tag}"], "judge": values[f"judge_target_share_{tag}"],
               "cnn_judge": values.get(f"cnn_judge_target_share_{tag}", float("nan"))}  # fmt: skip
        rows.append(row)
        walltime = started + row["wall_s"]
        writer.add_scalar("judge/inception_target_share", row["judge"], row["step"], walltime=walltime)
        writer.add_scalar("judge/cnn_target_share", row["cnn_judge"], row["step"], walltime=walltime)
        writer.add_scalar("judge/fid", row["fid"], row["step"], walltime=walltime)
    writer.close()
    return rows


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for name, rows in curves.items():
        t = [r["wall_s"] / 60 for r in rows]
        axes[0].plot(t, [100 * r["judge"] for r in rows], marker="o", label=name)
        axes[1].plot(t, [100 * r["cnn_judge"] for r in rows], marker="o", label=name)
    for ax, title in zip(axes, ("Inception judge", "independent CNN judge"), strict=True):
        ax.set_xlabel("training time (min, 2 CPU cores)")
        ax.set_ylabel("% of outputs called the target")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--a-dir", default="")
    p.add_argument("--b-dir", default="")
    p.add_argument("--budget-s", type=float, default=420, help="training seconds per arm")
    p.add_argument("--checkpoints", type=int, default=6, help="checkpoints (curve points) per arm")
    p.add_argument("--lr-g", default="5e-4")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out", default="runs/ab")
    p.add_argument("--skip-training", action="store_true", help="only evaluate the arms' runs in --out")
    args = p.parse_args()

    from training.cli import main as cli

    out = Path(args.out)
    data = ["--data", args.data] + (["--a-dir", args.a_dir, "--b-dir", args.b_dir] if args.a_dir else [])
    common = data + GENERATOR + ["--lr-g", args.lr_g, "--device", "cpu", "--precision", "fp32"]
    plan = {}
    for name in args.arms:
        run = out / name
        argv = common + ARMS[name]
        if not args.skip_training:
            seconds = step_time(argv + ["--out", str(run)])
            steps = max(args.checkpoints, int(args.budget_s / seconds))
            every = max(1, steps // args.checkpoints)
            plan[name] = {"step_s": seconds, "steps": steps}
            print(f"{name}: {seconds:.3f} s/step -> {steps} steps in {args.budget_s:.0f} s", flush=True)
            rc = cli(["train", "cyclegan", *argv, "--out", str(run), "--steps", str(steps),
                      "--decay-start", str(steps), "--ckpt-every", str(every), "--keep-checkpoints", "0",
                      "--sample-every", str(every), "--log-every", "25"])  # fmt: skip
            if rc:
                return rc
    if plan:
        (out / "plan.json").write_text(json.dumps(plan, indent=2))
    plan = json.loads((out / "plan.json").read_text())
    curves = {name: evaluate_checkpoints(out / name, out / "feature_cache") for name in args.arms}
    for name, rows in curves.items():  # training time = steps x the step time measured before the run
        for row in rows:
            row["wall_s"] = row["step"] * plan[name]["step_s"]
    plot(curves, out / "curve.png")
    print("\n| design | steps | s/step | train time | FID (identity) | Inception judge | CNN judge |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in curves.items():
        last = rows[-1]
        spt = plan[name]["step_s"]
        print(f"| {name} | {last['step']} | {spt:.2f} | {last['wall_s'] / 60:.1f} min | "
              f"{last['fid']:.1f} ({last['fid_identity']:.1f}) | {100 * last['judge']:.0f} % | "
              f"{100 * last['cnn_judge']:.0f} % |")  # fmt: skip
    print(f"\ncurve: {out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
