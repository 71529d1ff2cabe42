"""Training under torchrun (DDP): 2 processes on loopback with gloo, tiny nets, one thread each.

The ranks are started the way torchrun starts them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` in the environment, ``python -m training.cli train ...``), or by
torchrun itself where its restarts are the point. Every wait is bounded, so a hang fails a test
instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from training import distributed
from training.config import ConfigError
from training.loop import EMA, StepSampler, train

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
WAIT_S = 150  # any launch of 2 tiny ranks ends well within this on 2 busy cores (5-30 s when quiet)
COMMON = ["--precision", "fp32", "--device", "cpu", "--num-workers", "0"]
# the smallest nets of each recipe; pix2pix with batch norm (SyncBatchNorm's case), srgan's GAN phase
RECIPES = {
    "cyclegan": ["--data", str(FIXTURES / "yosemite"), "--size", "32", "--ngf", "4", "--ndf", "4",
                 "--blocks", "1", "--n-layers-d", "2"],
    "pix2pix": ["--data", str(FIXTURES / "facades"), "--direction", "BtoA", "--size", "32", "--ngf", "4",
                "--ndf", "4", "--n-layers-d", "2", "--norm", "batch"],
    "cgan": ["--data", str(FIXTURES / "quickdraw"), "--batch-size", "4", "--latent-dim", "8", "--ngf", "4",
             "--ndf", "4", "--embed-dim", "4", "--ema-decay", "0.9"],
    "classifier": ["--data", str(FIXTURES / "quickdraw"), "--batch-size", "4", "--width", "4"],
    "srgan": ["--data", str(FIXTURES / "sr"), "--phase", "gan", "--lr-patch", "8", "--num-feat", "8",
              "--num-conv", "2", "--ndf", "8", "--batch-size", "2"],
}  # fmt: skip


# -- launching ranks -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def launch(argv: list[str], world: int = 2, cwds: list[Path] | None = None) -> list[subprocess.Popen]:
    """Start ``world`` ranks of ``transfigure train ARGV`` as torchrun would (its environment)."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        cmd = [sys.executable, "-m", "training.cli", "train", *argv]
        cwd = cwds[rank] if cwds else ROOT
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = WAIT_S) -> list[tuple[int, str]]:
    """(exit code, output) of every rank; kills them all and fails if any outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((p.returncode, out.decode(errors="replace")))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"ranks still running after {timeout:.0f} s (a hang)")
    return results


def run_ranks(argv: list[str], world: int = 2, cwds: list[Path] | None = None) -> list[str]:
    results = finish(launch(argv, world, cwds))
    for rank, (code, out) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{out[-3000:]}"
    return [out for _, out in results]


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            outs = [p.communicate()[0].decode(errors="replace")[-2000:] for p in procs]
            pytest.fail(f"{path} never appeared:\n" + "\n---\n".join(outs))
        time.sleep(0.05)


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


# -- the pieces, in one process --------------------------------------------------------------------


def test_ranks_share_out_the_global_batch_stream() -> None:
    """2 ranks x batch 3 see exactly what 1 process x batch 6 sees, from any start step."""
    for start_step in (0, 5):
        single = StepSampler(7, seed=4, start=start_step * 6)
        shards = [StepSampler(7, 4, start_step * 6, rank=r, world_size=2, batch_size=3) for r in (0, 1)]
        it, its = iter(single), [iter(s) for s in shards]
        for _ in range(6):  # steps
            expected = [next(it) for _ in range(6)]
            assert [next(its[0]) for _ in range(3)] + [next(its[1]) for _ in range(3)] == expected
    with pytest.raises(ValueError, match="rank 2 of 2"):
        StepSampler(7, 0, rank=2, world_size=2, batch_size=1)


def test_each_rank_has_its_own_seed_and_rank_0_keeps_the_run_seed() -> None:
    assert distributed.rank_seed(7, 0) == 7
    seeds = [distributed.rank_seed(7, r) for r in range(1, 5)]
    assert len(set(seeds)) == 4 and 7 not in seeds
    assert seeds == [distributed.rank_seed(7, r) for r in range(1, 5)]  # reproducible
    assert distributed.rank_seed(8, 1) != distributed.rank_seed(7, 1)


def test_sync_batch_norm_shares_weights_and_converts_back_for_export() -> None:
    """On CUDA the nets get SyncBatchNorm; optimizers, checkpoints, EMA and export still fit."""
    from training.recipes import cgan
    from training.recipes.cgan import Config, resolve_data_fields

    cfg = resolve_data_fields(Config(data=str(FIXTURES / "quickdraw"), latent_dim=8, ngf=4, embed_dim=4))
    net = cgan.build_inference_nets(cfg)["G"]
    params = [id(p) for p in net.parameters()]
    keys = list(net.state_dict())
    assert distributed.sync_batch_norm(net) is net
    assert any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    assert [id(p) for p in net.parameters()] == params and list(net.state_dict()) == keys

    ema = EMA(net, 0.9)  # the copy that is sampled and exported runs in one process
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in ema.module.modules())
    exported = cgan.build_inference_nets(cfg)["G"]
    exported.load_state_dict(net.state_dict())  # a DDP run's checkpoint loads into the plain net
    exported.load_state_dict(ema.state_dict())

    assert distributed.plain_batch_norm(net) is net
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    assert [id(p) for p in net.parameters()] == params and list(net.state_dict()) == keys


# -- the recipes under DDP -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_recipe_trains_under_ddp_and_only_rank_0_writes(recipe: str, tmp_path: Path) -> None:
    # Each rank runs in a folder of its own with the same relative --out: anything rank 1 wrote
    # would land in its own folder.
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    for d in cwds:
        d.mkdir()
    argv = [recipe, *RECIPES[recipe], *COMMON, "--out", "run", "--steps", "3", "--ckpt-every", "2",
            "--log-every", "1", "--sample-every", "3"]  # fmt: skip
    out0, out1 = run_ranks(argv, cwds=cwds)

    run = cwds[0] / "run"
    assert not (cwds[1] / "run").exists(), "rank 1 wrote into the run folder"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pt", "step_0000002.pt", "step_0000003.pt",
    ]  # fmt: skip
    assert (run / "config.json").is_file() and list((run / "tb").iterdir())
    assert (run / "samples" / "step_0000003.png").is_file()
    # the progress bar and the log lines are rank 0's
    assert "step 3/3" in out0 and "step 3/3" not in out1 and "it/s" not in out1

    state = checkpoint(run)
    assert state["step"] == 3 and state["world_size"] == 2 and state["hardware"].endswith("2 processes")
    per_rank = int(argv[argv.index("--batch-size") + 1]) if "--batch-size" in argv else 1
    assert state["config"]["batch_size"] == per_rank  # --batch-size is per rank, saved as given
    assert len(state["rank_rng"]) == len(state["rank_extra"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])  # own streams

    from training.recipes import load_run

    loaded = load_run(run)  # what evaluate and export rebuild: plain nets, the checkpoint's weights
    assert loaded.nets and not any(
        isinstance(m, nn.SyncBatchNorm) for g in loaded.nets.values() for m in g.modules()
    )


def test_two_ranks_match_one_process_with_the_global_batch(tmp_path: Path, small_torch) -> None:
    """--batch-size is per rank: 2 ranks x 2 train the same weights as 1 process x 4.

    SRGAN's PSNR phase (no batch norm, no randomness in the step): after 4 Adam steps the weights
    agree to 1e-6 (measured: 3e-8; only the order of the float sums differs)."""
    from training.recipes import srgan

    args = ["--data", str(FIXTURES / "sr"), "--lr-patch", "8", "--num-feat", "8", "--num-conv", "2",
            "--steps", "4", "--log-every", "2", "--sample-every", "0"]  # fmt: skip
    run_ranks(["srgan", *args, *COMMON, "--batch-size", "2", "--out", str(tmp_path / "ddp")])
    cfg = srgan.Config(
        data=str(FIXTURES / "sr"), lr_patch=8, num_feat=8, num_conv=2, steps=4, log_every=2, sample_every=0,
        precision="fp32", device="cpu", num_workers=0, batch_size=4, out=str(tmp_path / "single"),
    )  # fmt: skip
    assert train(srgan.NAME, cfg, srgan.SRGANRecipe) == 0

    a, b = checkpoint(tmp_path / "single"), checkpoint(tmp_path / "ddp")
    assert a["step"] == b["step"] == 4 and (a["world_size"], b["world_size"]) == (1, 2)
    for group in ("nets", "ema"):
        for net, state in a[group].items():
            for key, value in state.items():
                torch.testing.assert_close(
                    b[group][net][key], value, rtol=1e-5, atol=1e-6, msg=f"{group}.{net}.{key}"
                )
    # and the weights did move: the comparison is not between two untrained nets
    fresh = srgan.build_inference_nets(cfg)["G"].state_dict()
    assert any(not torch.allclose(v, fresh[k]) for k, v in a["nets"]["G"].items() if v.is_floating_point())


def test_resume_same_world_size_equals_a_straight_run_and_another_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cGAN: per-rank noise from each rank's RNG, batch norm, EMA with its calibration on rank 0."""
    args = ["cgan", *RECIPES["cgan"], *COMMON, "--log-every", "2", "--sample-every", "0"]
    straight, halves = str(tmp_path / "straight"), str(tmp_path / "halves")
    run_ranks([*args, "--steps", "4", "--out", straight])
    run_ranks([*args, "--steps", "2", "--out", halves])  # a session that ends half-way
    run_ranks([*args, "--steps", "4", "--out", halves, "--resume"])

    a, b = checkpoint(Path(straight)), checkpoint(Path(halves))
    assert a["step"] == b["step"] == 4
    for group in ("nets", "ema"):
        for net, state in a[group].items():
            for key, value in state.items():
                assert torch.equal(value, b[group][net][key]), f"{group}.{net}.{key} differs after resume"

    # one process cannot continue a 2-process run: the message names both sizes
    from training.cli import main

    argv = ["train", *args, "--steps", "6", "--out", halves, "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "world size 2" in err and "world size 1" in err
    from training.recipes.cgan import CGANRecipe, Config, resolve_data_fields

    cfg = resolve_data_fields(Config(data=str(FIXTURES / "quickdraw"), out=halves, resume=True))
    with pytest.raises(ConfigError, match="world size 2; this one has world size 1"):
        train("cgan", replace(cfg, steps=6), CGANRecipe, explicit={"steps", "resume", "out"})


# -- stopping ---------------------------------------------------------------------------------------

LONG_RUN = ["cyclegan", *RECIPES["cyclegan"], *COMMON, "--steps", "100000", "--log-every", "1000",
            "--sample-every", "0", "--ckpt-every", "2"]  # fmt: skip


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    procs = launch([*LONG_RUN, "--out", str(run)])
    wait_for(run / "checkpoints" / "step_0000002.pt", procs)
    procs[1].send_signal(signal.SIGTERM)
    results = finish(procs, timeout=30)
    assert [code for code, _ in results] == [130, 130], [out[-2000:] for _, out in results]
    step = checkpoint(run)["step"]
    assert step >= 2 and f"stopped at step {step} of 100000" in results[0][1]


def test_a_killed_rank_ends_the_run_and_resume_continues(tmp_path: Path) -> None:
    run = tmp_path / "run"
    procs = launch([*LONG_RUN, "--out", str(run)])
    wait_for(run / "checkpoints" / "step_0000002.pt", procs)
    start = time.monotonic()
    procs[1].kill()
    (code, out), _ = finish(procs, timeout=30)  # rank 0 must not wait for the dead rank
    assert code not in (0, 130) and time.monotonic() - start < 30
    assert any(s in out for s in ("peer", "remote worker", "Gloo")), out[-2000:]  # the rank is gone

    last = checkpoint(run)  # the last complete checkpoint is intact
    steps = str(last["step"] + 2)
    run_ranks([*LONG_RUN, "--out", str(run), "--steps", steps, "--resume"])
    assert checkpoint(run)["step"] == int(steps)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find a rank")
def test_torchrun_max_restarts_recovers_a_killed_rank_from_the_checkpoint(tmp_path: Path) -> None:
    """The documented recovery path: torchrun restarts every rank, and --resume continues the run."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "training.cli", "train",
           *LONG_RUN, "--steps", "40", "--ckpt-every", "4", "--out", str(run), "--resume"]  # fmt: skip
    agent = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(run / "checkpoints" / "step_0000004.pt", [agent])
    rank1 = [pid for pid in _children(agent.pid) if _rank_of(pid) == 1]
    assert rank1, "no worker with RANK=1 under torchrun"
    os.kill(rank1[0], signal.SIGKILL)
    ((code, out),) = finish([agent], timeout=90)
    assert code == 0, out[-3000:]
    assert checkpoint(run)["step"] == 40
    assert "exitcode: -9" in out  # torchrun saw the killed rank, and restarted the group
