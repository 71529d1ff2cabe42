"""The shared loop: resumable data stream, exact resume, checkpoints, EMA, schedule, config, signals."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from training import loop
from training.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    merge_resume_config,
)
from training.loop import (
    EMA,
    Runtime,
    StepSampler,
    data_stream,
    image_grid,
    linear_decay_schedule,
    resolve_precision,
    train,
)


class ToyData:
    """Items drawn from their seed, like the image datasets' augmentation."""

    def __len__(self) -> int:
        return 5

    def load_item(self, index: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.standard_normal(4).astype(np.float32)) + index
        return {"x": x, "index": index, "seed": seed}


@dataclass
class ToyConfig(TrainConfig):
    lr: float = field(default=0.05, metadata={"help": "learning rate"})
    width: int | None = None


class ToyRecipe:
    """Uses every RNG the real recipes use: torch (dropout), Python (like the image pool), numpy."""

    generators = ("G",)

    def __init__(self, cfg: ToyConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.nets = {
            "G": nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 4)),
            "D": nn.Linear(4, 1),
        }
        params = [p for n in self.nets.values() for p in n.parameters()]
        self.optimizers = {"all": torch.optim.Adam(params, lr=cfg.lr)}
        self.schedulers = {"all": linear_decay_schedule(self.optimizers["all"], cfg.steps)}
        self.history: list[float] = []
        self.on_step = None

    def batches(self, start_step: int):
        return data_stream(ToyData(), self.cfg.batch_size, self.cfg.seed, start_step, self.cfg.num_workers)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        x = batch["x"] * (1.0 + 0.1 * random.random()) + float(np.random.rand())
        with self.rt.autocast():
            loss = ((self.nets["G"](x) - x) ** 2).mean() + self.nets["D"](x).pow(2).mean()
        self.optimizers["all"].zero_grad()
        self.rt.backward(loss)
        self.rt.step(self.optimizers["all"])
        self.history.append(loss.item())
        if self.on_step is not None:
            self.on_step(step)
        return {"loss": loss.detach(), "plain": 1.0}

    def sample_images(self, generators: dict[str, nn.Module], step: int) -> torch.Tensor:
        torch.rand(10), random.random(), np.random.rand()  # must not disturb training
        return image_grid([torch.rand(2, 3, 8, 8) * 2 - 1])

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])


def toy_cfg(out: Path, **kw: Any) -> ToyConfig:
    base = {
        "out": str(out),
        "steps": 8,
        "batch_size": 2,
        "device": "cpu",
        "precision": "fp32",
        "num_workers": 0,
    }
    base.update(ckpt_every=100, log_every=3, sample_every=0, seed=3)
    base.update(kw)
    return ToyConfig(**base)


def final_state(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def assert_same_nets(a: dict[str, Any], b: dict[str, Any]) -> None:
    for net in a["nets"]:
        for key, value in a["nets"][net].items():
            torch.testing.assert_close(value, b["nets"][net][key], rtol=1e-6, atol=1e-7, msg=f"{net}.{key}")


def test_stream_resumes_exactly_and_covers_each_epoch() -> None:
    straight = data_stream(ToyData(), batch_size=2, seed=1)
    batches = [next(straight) for _ in range(7)]
    resumed = data_stream(ToyData(), batch_size=2, seed=1, start_step=4)
    for expected in batches[4:]:
        got = next(resumed)
        assert torch.equal(got["x"], expected["x"]) and torch.equal(got["seed"], expected["seed"])
    sampler = iter(StepSampler(5, seed=9))
    first_epochs = [next(sampler)[0] for _ in range(10)]
    assert sorted(first_epochs[:5]) == sorted(first_epochs[5:]) == list(range(5))
    assert first_epochs[:5] != first_epochs[5:] or first_epochs[:5] != list(range(5))  # shuffled
    other_seed = data_stream(ToyData(), batch_size=2, seed=2)
    assert not torch.equal(next(other_seed)["x"], batches[0]["x"])


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    """N steps straight == N/2 steps, stop, --resume for the rest (EMA, RNG and extra state too)."""
    assert train("toy", toy_cfg(tmp_path / "straight", ema_decay=0.9, sample_every=3), ToyRecipe) == 0
    half = toy_cfg(tmp_path / "halves", ema_decay=0.9, sample_every=3)
    assert train("toy", half, ToyRecipe, stop_at=4) == 0
    assert final_state(tmp_path / "halves")["step"] == 4
    assert (
        train("toy", toy_cfg(tmp_path / "halves", ema_decay=0.9, resume=True, sample_every=3), ToyRecipe) == 0
    )

    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "halves")
    assert a["step"] == b["step"] == 8
    assert_same_nets(a, b)
    for key, value in a["ema"]["G"].items():
        torch.testing.assert_close(value, b["ema"]["G"][key])
    assert a["extra"]["history"] == pytest.approx(b["extra"]["history"], rel=1e-6)
    assert a["optimizers"]["all"]["param_groups"][0]["lr"] == b["optimizers"]["all"]["param_groups"][0]["lr"]
    assert b["wall_time_s"] > 0 and b["hardware"].startswith("cpu")


def test_sampling_does_not_change_training(tmp_path: Path) -> None:
    train("toy", toy_cfg(tmp_path / "quiet", steps=4), ToyRecipe)
    train("toy", toy_cfg(tmp_path / "samples", steps=4, sample_every=1), ToyRecipe)
    assert_same_nets(final_state(tmp_path / "quiet"), final_state(tmp_path / "samples"))
    assert len(list((tmp_path / "samples" / "samples").glob("step_*.png"))) == 4


def test_run_folder_layout_and_checkpoint_keys(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("toy", toy_cfg(run, steps=6, ckpt_every=1, keep_checkpoints=2, ema_decay=0.5), ToyRecipe)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "step_0000005.pt", "step_0000006.pt"]
    state = final_state(run)
    for key in (
        "recipe",
        "config",
        "step",
        "nets",
        "ema",
        "optimizers",
        "schedulers",
        "rng",
        "wall_time_s",
        "hardware",
    ):
        assert key in state, key
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert state["recipe"] == "toy" and state["config"]["steps"] == 6 and set(state["ema"]) == {"G"}
    saved = json.loads((run / "config.json").read_text())
    assert saved == {"recipe": "toy", "config": state["config"]}
    assert list((run / "tb").iterdir())
    with pytest.raises(FileExistsError, match="--resume"):
        train("toy", toy_cfg(run, steps=6), ToyRecipe)


def test_resume_refuses_a_different_experiment(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("toy", toy_cfg(run, steps=2), ToyRecipe)
    with pytest.raises(ConfigError, match="lr: run has 0.05, asked for 0.1"):
        train("toy", toy_cfg(run, steps=4, lr=0.1, resume=True), ToyRecipe)
    # only what the user typed counts: an explicit --steps extends the run, defaults are ignored
    assert (
        train("toy", toy_cfg(run, steps=3, lr=0.1, resume=True), ToyRecipe, explicit={"steps", "resume"}) == 0
    )
    assert final_state(run)["step"] == 3 and final_state(run)["config"]["lr"] == 0.05


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path: Path) -> None:
    class Stopping(ToyRecipe):
        def __init__(self, cfg, rt):
            super().__init__(cfg, rt)
            self.on_step = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None

    before = signal.getsignal(signal.SIGTERM)
    assert train("toy", toy_cfg(tmp_path / "run"), Stopping) == 130
    assert final_state(tmp_path / "run")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # handlers are restored


def test_ema_averages_parameters_and_copies_buffers() -> None:
    net = nn.BatchNorm1d(2)
    ema = EMA(net, decay=0.75)
    with torch.no_grad():
        net.weight.fill_(3.0)  # from 1.0
        net.running_mean.fill_(5.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, torch.full((2,), 1.5))  # 0.75 * 1 + 0.25 * 3
    torch.testing.assert_close(ema.module.running_mean, torch.full((2,), 5.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)


def test_ema_forgets_the_initial_weights_early_in_a_run() -> None:
    """With the step-dependent warm-up the average follows a net that moved away from its
    initial weights; with the plain decay 0.999 it would still be ~37 % initial after 1,000 steps."""
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.999)
    assert (
        ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.999 and ema.decay_at(None) == 0.999
    )
    with torch.no_grad():
        net.weight.fill_(1.0)  # the net moved at once and stays
    for step in range(1000):
        ema.update(net, step)
    assert ema.module.weight.item() > 0.95
    plain = EMA(torch.nn.Linear(1, 1, bias=False).requires_grad_(False), decay=0.999)
    torch.nn.init.zeros_(plain.module.weight)
    for _ in range(1000):
        plain.update(net)
    assert plain.module.weight.item() == pytest.approx(1 - 0.999**1000, abs=1e-3)


def test_linear_decay_schedule() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_decay_schedule(opt, total_steps=10, decay_start=6)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:7] == [1.0] * 7
    assert lrs[7:] == pytest.approx([0.75, 0.5, 0.25])
    assert opt.param_groups[0]["lr"] == 0.0


def test_config_arguments_track_what_was_typed() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig, aliases={"lr": ["--learning-rate"]})
    args = parser.parse_args(["--steps", "5", "--learning-rate", "0.5", "--no-resume", "--width", "none"])
    cfg, explicit = config_from_args(ToyConfig, args)
    assert (cfg.steps, cfg.lr, cfg.resume, cfg.width) == (5, 0.5, False, None)
    assert explicit == {"steps", "lr", "resume", "width"}
    assert cfg.batch_size == TrainConfig.batch_size
    assert "learning rate (default: 0.05)" in parser.format_help()
    merged = merge_resume_config(ToyConfig(lr=0.2, steps=3), ToyConfig(steps=9), {"steps"})
    assert (merged.lr, merged.steps) == (0.2, 9)


def test_runtime_precision_rules() -> None:
    assert Runtime.create("cpu", "fp32").amp_dtype is None
    assert Runtime.create("cpu", "auto").precision in {"fp32", "bf16"}
    rt = Runtime.create("cpu", "bf16")
    with rt.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        Runtime.create("cpu", "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        Runtime.create("cpu", "fp8")


def test_auto_precision_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided without a GPU: what the GPU reports is set through torch.cuda's public query."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"  # Runtime turns the GradScaler on for fp16
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) in {"fp32", "bf16"}  # the CPU rule is unchanged


def test_batches_are_pinned_and_loaded_by_workers_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(loop, "data_stream", lambda *args, **kwargs: seen.append({"args": args, **kwargs}))
    cfg = TrainConfig(batch_size=2, num_workers=3)
    for device in ("cuda", "cpu"):
        rt = Runtime(torch.device(device), "fp32", torch.amp.GradScaler("cpu", enabled=False))
        loop.batch_stream([0, 1, 2], cfg, rt, start_step=5)
    on_cuda, on_cpu = seen
    assert on_cuda["pin_memory"] is True and on_cpu["pin_memory"] is False
    assert on_cuda["args"][1:] == on_cpu["args"][1:] == (2, 0, 5, 3)  # batch, seed, start, workers
