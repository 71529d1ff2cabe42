"""The training loop every recipe shares: device/AMP, EMA, checkpoints and exact resume, logging.

A recipe (``training/recipes/<name>.py``) provides a :class:`Recipe`: its nets, optimizers and
schedulers, an endless batch stream that can start at any step, one ``train_step`` and a sample
grid. Everything else lives here, in one loop that reads top to bottom (:func:`train`)::

    @dataclass
    class Config(TrainConfig):          # common fields: data, out, steps, batch_size, seed, ...
        lr: float = 2e-4

    def run(args) -> int:
        cfg, explicit = config_from_args(Config, args)
        return train("myrecipe", cfg, MyRecipe, explicit)   # MyRecipe(cfg, runtime) -> Recipe

Contracts the loop keeps (and recipes rely on):

* **Schedulers** are stepped by the loop, once after every ``train_step``; recipes never step them.
* **Precision**: the recipe wraps its forward passes in ``runtime.autocast()`` and calls
  ``runtime.backward(loss)`` / ``runtime.step(optimizer)`` (a GradScaler is active for fp16 only).
* **Exact resume**: ``N`` steps straight == ``N/2`` steps + ``--resume`` for the rest (same weights
  on CPU; on GPU within float tolerance). The checkpoint holds nets, EMA, optimizers, schedulers,
  the grad scaler, all RNG states and the recipe's extra state (``state_dict``/``load_state_dict``,
  e.g. the CycleGAN image pool). Batches come from :func:`data_stream`, which is a pure function of
  (seed, step), so a resumed run sees the same images with the same augmentations.
* **Sampling** never perturbs training: ``sample_images`` runs under ``no_grad`` with every RNG
  state saved and restored around it, on the EMA generators when EMA is on.
* **Many processes** (``torchrun``, see :mod:`training.distributed`): ``--batch-size`` is per
  process (the global batch is ``batch_size x world size``; the learning rate is used as
  configured); each rank trains on its own slice of the global batch stream, seeded from
  ``(seed, rank)``; only rank 0 writes the run folder, and a checkpoint holds every rank's RNG and
  recipe state, so it resumes exactly with the same world size (another one is refused).
* **Run folder** ``RUN/``: ``config.json`` = ``{"recipe": name, "config": asdict(cfg)}``,
  ``checkpoints/step_XXXXXXX.pt`` + ``checkpoints/last.pt`` (written atomically; keys fixed by
  ``training/recipes/__init__.py``), ``samples/step_XXXXXXX.png``, ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import platform
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from models.files import atomic_link_or_copy, atomic_write, atomic_write_json
from models.grid import tile
from training import distributed
from training.config import (
    PRECISIONS,
    ConfigError,
    TrainConfig,
    config_from_args,
    config_from_dict,
    merge_resume_config,
)
from training.distributed import Context, plain_batch_norm, rank_and_world, rank_seed, wrap_recipe

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


# ------------------------------------------------------------------------------------------------
# device and precision
# ------------------------------------------------------------------------------------------------
def _cpu_supports_bf16() -> bool:
    # bf16 autocast on a CPU without native bf16 (AVX512-BF16 / AMX) is slower than fp32.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> on CUDA bf16 where the GPU supports it (Ampere and later), else fp16 with a grad
    scaler (:class:`Runtime`); on a CPU bf16 where it is native, else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            # bf16 keeps fp32's range: no loss scaling; older GPUs get fp16 autocast + GradScaler
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if _cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


def hardware_string(device: torch.device) -> str:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda: {torch.cuda.get_device_name(idx)}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu: {cpu} ({torch.get_num_threads()} threads)"


@dataclass
class Runtime:
    """Where and in which precision a recipe computes. Built by :func:`train`, handed to the recipe."""

    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    scaler: torch.amp.GradScaler

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        return cls(dev, prec, torch.amp.GradScaler(dev.type, enabled=prec == "fp16"))

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step through the grad scaler (plain ``step()`` unless fp16)."""
        self.scaler.step(optimizer)
        self.scaler.update()


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values are left alone."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------------------------------------------
# learning rate, EMA, seeding
# ------------------------------------------------------------------------------------------------
def linear_decay_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, decay_start: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant learning rate, then linear decay to 0 at ``total_steps`` (the CycleGAN/pix2pix
    schedule: ``decay_start`` defaults to half-way, like 100 + 100 epochs)."""
    start = total_steps // 2 if decay_start is None else decay_start
    span = max(1, total_steps - start)

    # A plain function (not a callable object) so LambdaLR does not pickle it into its state:
    # a resumed run that extends ``steps`` gets the new schedule.
    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / span)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMA:
    """Exponential moving average of a net's weights (buffers are copied, not averaged).

    Batch-norm running statistics copied from the live net do not fit the averaged weights (they
    were measured on the live net's activations); a recipe whose generator has batch norm
    recomputes them for the EMA copy with :func:`recalibrate_batch_norm` before the copy is sampled
    or saved (the ``calibrate_generator`` hook of :class:`Recipe`)."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")

        self.decay = decay
        # runs in one process: SyncBatchNorm layers of a net trained under DDP become plain again
        self.module = plain_batch_norm(copy.deepcopy(net)).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay used after optimisation step ``step`` (0-based): ``min(decay, (1 + step) /
        (10 + step))``, so that the average forgets the initial weights within the first few
        hundred steps instead of keeping ``decay ** steps`` of them (a third after 1,000 steps at
        0.999); ``None``: the configured decay."""
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for ema_p, p in zip(self.module.parameters(), net.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), net.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, inputs: Iterable[tuple[Any, ...]], autocast: Any = None) -> int:
    """Recompute every batch-norm running mean/var of ``net`` as the exact average over the
    batches ``inputs`` yields (``net(*batch)`` in train mode; BigGAN's "standing statistics"),
    then restore the net's mode and momenta. Returns the number of batch-norm layers (0: nothing
    to do, ``inputs`` is not consumed)."""
    bns = [
        m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    mode, momenta = net.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    try:
        for batch in inputs:
            with autocast() if autocast is not None else contextlib.nullcontext():
                net(*batch)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        net.train(mode)
    return len(bns)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. sampling) without disturbing any RNG the training stream depends on."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


# ------------------------------------------------------------------------------------------------
# data: a resumable stream
# ------------------------------------------------------------------------------------------------
def item_seed(seed: int, k: int, stream: int = 0) -> int:
    """A 63-bit seed for the k-th sample of the stream (well mixed, so neighbours are independent);
    ``stream`` separates uses (0: per-sample augmentation, 1: per-epoch permutations)."""
    entropy = [seed & 0xFFFFFFFF, stream, k]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepSampler(torch.utils.data.Sampler):
    """An endless stream of ``(index, seed)``: sample k of the stream is element ``k % n`` of the
    permutation for epoch ``k // n`` (seeded by ``(seed, epoch)``), with its own augmentation seed.
    It is a pure function of k, so starting at ``k = step * batch_size`` resumes the stream exactly.

    Sharded (``world_size > 1``), the stream is cut into global batches of ``batch_size x
    world_size`` samples and this sampler yields only rank ``rank``'s slice of each, from the global
    batch that starts at sample ``start``: the ranks together see what one process with the global
    batch would see."""

    def __init__(
        self, n: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1, batch_size: int = 1
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(f"bad shard: rank {rank} of {world_size}, batch size {batch_size}")
        self.n, self.seed, self.start = n, seed, start
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def global_index(self, i: int) -> int:
        """The stream position of this sampler's i-th sample."""
        b = self.batch_size
        return self.start + (i // b) * b * self.world_size + self.rank * b + i % b

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(item_seed(self.seed, epoch, stream=1))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        i = 0
        epoch, perm = -1, []
        while True:
            k = self.global_index(i)
            e, pos = divmod(k, self.n)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield perm[pos], item_seed(self.seed, k)
            i += 1


class _Seeded(torch.utils.data.Dataset):
    """Feeds ``(index, seed)`` to ``dataset.load_item(index, seed)`` (deterministic augmentation);
    datasets without it are indexed plainly and must then be deterministic themselves."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        load = getattr(self.dataset, "load_item", None)
        return load(index, seed) if load is not None else self.dataset[index]


def data_stream(
    dataset: Any,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Iterator[Any]:
    """Endless batches for steps ``start_step, start_step + 1, ...`` — the same batches whether the
    run started at 0 or resumed. Give the dataset a ``load_item(index, seed)`` method that draws
    all its randomness (pairing, crops, flips) from ``seed``.

    In a distributed run (``rank``/``world_size`` default to the process group's) each rank gets
    its ``batch_size`` slice of the global batch of ``batch_size x world_size``."""
    group_rank, group_world = rank_and_world()
    rank = group_rank if rank is None else rank
    world_size = group_world if world_size is None else world_size
    sampler = StepSampler(
        len(dataset), seed, start_step * batch_size * world_size, rank, world_size, batch_size
    )
    loader = torch.utils.data.DataLoader(
        _Seeded(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Own generator: creating the loader must not draw from the global torch RNG, or a resumed
        # run (which creates it at a different step) would diverge from a straight one.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    return iter(loader)


def batch_stream(dataset: Any, cfg: TrainConfig, rt: Runtime, start_step: int = 0) -> Iterator[Any]:
    """A recipe's ``batches(start_step)``: :func:`data_stream` over ``dataset`` with the config's batch
    size, seed and loader processes, into pinned memory when training on CUDA."""
    return data_stream(
        dataset, cfg.batch_size, cfg.seed, start_step, cfg.num_workers, pin_memory=rt.device.type == "cuda"
    )


# ------------------------------------------------------------------------------------------------
# the recipe protocol
# ------------------------------------------------------------------------------------------------
class Recipe(Protocol):
    """What :func:`train` needs from a recipe. Optional extras: ``state_dict()`` and
    ``load_state_dict(state)`` for state outside nets/optimizers (e.g. an image pool), and
    ``calibrate_generator(name, module)``, called (RNG preserved, no grad) on each EMA generator
    before it is sampled or saved — e.g. to recompute batch-norm statistics for the EMA weights."""

    nets: dict[str, nn.Module]  # every net that is trained and checkpointed
    generators: tuple[str, ...]  # the names in ``nets`` that get EMA and are exported
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]  # stepped by the loop after every train_step

    def batches(self, start_step: int) -> Iterator[Any]:
        """Endless batches, starting with the batch of ``start_step`` (use :func:`batch_stream`)."""
        ...

    def train_step(self, batch: Any, step: int) -> dict[str, float | Tensor]:
        """One optimisation step on ``batch``; returns scalars to log (floats or 0-d tensors; the
        loop converts tensors only when it logs, so a GPU is not synchronised every step)."""
        ...

    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        """A sample grid ``C x H x W`` in [0, 1] made with ``generators`` (EMA copies when EMA is on,
        in eval mode, under no_grad). See :func:`image_grid`."""
        ...


def image_grid(rows: list[Tensor], value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Stack equally sized image batches as rows of one grid (``C x H x W`` in [0, 1]); e.g.
    ``[real_A, fake_B, rec_A]`` gives one row per kind, one column per image."""
    lo, hi = value_range
    images = torch.stack([r.detach().float().cpu() for r in rows], dim=0)  # K x N x C x H x W
    images = ((images - lo) / (hi - lo)).clamp(0, 1)
    if images.shape[2] == 1:  # grey previews are shown as RGB
        images = images.expand(-1, -1, 3, -1, -1)
    grid = tile(images.permute(0, 1, 3, 4, 2).numpy(), pad=2, pad_value=1.0)  # H x W x C
    return torch.from_numpy(grid).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def step_checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


class _GracefulStop:
    """SIGINT/SIGTERM ask the loop to stop after the current step and write a checkpoint; a second
    Ctrl-C aborts at once, without a checkpoint (the step may be half done)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step and writing a checkpoint")

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def train(
    name: str,
    cfg: TrainConfig,
    build: Callable[[Any, Runtime], Recipe],
    explicit: Iterable[str] | None = None,
    stop_at: int | None = None,
) -> int:
    """Train recipe ``name``: ``build(cfg, runtime)`` makes the recipe; returns an exit code.

    ``explicit``: the config fields the user set (from :func:`config_from_args`); on ``--resume`` the
    saved config is used and only these may change it (None: all of ``cfg`` counts as requested).
    ``stop_at``: stop this process at that step with a checkpoint (tests, time boxes); the schedule
    still follows ``cfg.steps``. Returns 0, or 130 when stopped by Ctrl-C/SIGTERM.
    Under ``torchrun`` every process calls this; see :mod:`training.distributed`.
    """
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    ctx = distributed.init_from_env()
    try:
        return _train(name, cfg, build, explicit, stop_at, ctx)
    finally:
        ctx.close()


def _device_of_rank(name: str, local_rank: int) -> torch.device:
    """One process per GPU: a distributed rank computes on the GPU of its ``LOCAL_RANK``."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
            "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but {count} GPU(s) visible: start one process per GPU "
            f"(torchrun --nproc-per-node {count})"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _train(
    name: str,
    cfg: TrainConfig,
    build: Callable[[Any, Runtime], Recipe],
    explicit: Iterable[str] | None,
    stop_at: int | None,
    ctx: Context,
) -> int:
    from torch.utils.tensorboard import SummaryWriter

    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / name))
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / LAST_CHECKPOINT

    found = ctx.all_gather(last_path.is_file())
    if len(set(found)) > 1:
        missing = [r for r, f in enumerate(found) if not f]
        raise ConfigError(
            f"{last_path} exists for some ranks but not for ranks {missing}: every process must see "
            "the same run folder (put --out on storage that all nodes mount)"
        )
    ckpt = None
    if found[0]:
        if not cfg.resume:
            raise FileExistsError(
                f"{run_dir} already holds a training run ({last_path}); pass --resume to continue it, "
                "or choose another --out"
            )
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if ckpt.get("recipe") != name:
            raise ConfigError(
                f"{last_path} is a '{ckpt.get('recipe')}' run, not '{name}'; choose another --out"
            )
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != ctx.world_size:
            raise ConfigError(
                f"{last_path} was written by a run of world size {saved_world}; this one has world size "
                f"{ctx.world_size}. Each rank's data slice, RNG streams and recipe state belong to "
                f"its world size: resume with {saved_world} process(es) in all (torchrun --nnodes x "
                "--nproc-per-node), or start a new run with another --out"
            )

        saved = config_from_dict(type(cfg), ckpt["config"])
        cfg = merge_resume_config(saved, cfg, explicit)
    elif cfg.resume and ctx.is_main:
        warnings.warn(f"--resume: no checkpoint in {ckpt_dir}, starting a new run", stacklevel=3)

    seed_everything(rank_seed(cfg.seed, ctx.rank))
    device = _device_of_rank(cfg.device, ctx.local_rank) if ctx.distributed else resolve_device(cfg.device)
    rt = Runtime.create(str(device), cfg.precision)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed-size crops: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    recipe = build(cfg, rt)
    # EMA and sampling run on rank 0 only: the weights are the same on every rank
    use_ema = cfg.ema_decay > 0 and ctx.is_main
    ema = {g: EMA(recipe.nets[g], cfg.ema_decay) for g in recipe.generators} if use_ema else {}
    hardware = hardware_string(rt.device)
    if ctx.distributed:
        hardware += f", {ctx.world_size} processes"

    step, wall_before = 0, 0.0
    if ckpt is not None:
        for key, net in recipe.nets.items():
            net.load_state_dict(ckpt["nets"][key])
        for key, e in ema.items():
            e.load_state_dict(ckpt["ema"][key] if key in (ckpt.get("ema") or {}) else ckpt["nets"][key])
        for key, opt in recipe.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][key])
        for key, sch in recipe.schedulers.items():
            sch.load_state_dict(ckpt["schedulers"][key])
        if ckpt.get("scaler"):
            rt.scaler.load_state_dict(ckpt["scaler"])
        extra = ckpt["rank_extra"][ctx.rank] if ckpt.get("rank_extra") else ckpt.get("extra")
        if extra is not None and hasattr(recipe, "load_state_dict"):
            recipe.load_state_dict(extra)
        set_rng_state(ckpt["rank_rng"][ctx.rank] if ckpt.get("rank_rng") else ckpt["rng"])
        step, wall_before = int(ckpt["step"]), float(ckpt.get("wall_time_s", 0.0))
        del ckpt
    # the nets as built: what is checkpointed, averaged and sampled (the recipe calls DDP wrappers)
    nets = wrap_recipe(recipe, rt.device) if ctx.distributed else dict(recipe.nets)

    writer = None
    if ctx.is_main:
        atomic_write_json(run_dir / "config.json", {"recipe": name, "config": asdict(cfg)})
        writer = SummaryWriter(str(run_dir / "tb"))
    t_start = time.perf_counter()
    saved_step = step

    def calibrate_ema() -> None:
        if hasattr(recipe, "calibrate_generator"):
            with preserved_rng(), torch.no_grad():
                for g, e in ema.items():
                    recipe.calibrate_generator(g, e.module)

    def save() -> None:
        """Every rank calls this: rank 0 writes the checkpoint with every rank's RNG and extra state."""
        nonlocal saved_step
        calibrate_ema()
        rngs = ctx.gather(rng_state())
        extras = ctx.gather(recipe.state_dict() if hasattr(recipe, "state_dict") else None)
        saved_step = step
        if not ctx.is_main:
            return
        state = {
            "recipe": name,
            "config": asdict(cfg),
            "step": step,
            "world_size": ctx.world_size,
            "nets": {k: n.state_dict() for k, n in nets.items()},
            "ema": {k: e.state_dict() for k, e in ema.items()},
            "optimizers": {k: o.state_dict() for k, o in recipe.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in recipe.schedulers.items()},
            "scaler": rt.scaler.state_dict() if rt.scaler.is_enabled() else None,
            "extra": extras[0],
            "rng": rngs[0],
            "wall_time_s": wall_before + time.perf_counter() - t_start,
            "hardware": hardware,
            "precision": rt.precision,
        }
        if ctx.distributed:
            state["rank_rng"], state["rank_extra"] = rngs, extras
        path = ckpt_dir / step_checkpoint_name(step)
        atomic_write(path, lambda f: torch.save(state, f))
        atomic_link_or_copy(path, last_path)
        if cfg.keep_checkpoints > 0:
            for old in sorted(ckpt_dir.glob("step_*.pt"))[: -cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)

    def sample() -> None:
        calibrate_ema()
        gens = {g: (ema[g].module if g in ema else nets[g]) for g in recipe.generators}
        modes = {g: m.training for g, m in gens.items()}
        with preserved_rng(), torch.no_grad():
            for m in gens.values():
                m.eval()
            grid = recipe.sample_images(gens, step)
            for g, m in gens.items():
                m.train(modes[g])

        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        pixels = grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
            run_dir / "samples" / f"step_{step:07d}.png"
        )
        writer.add_image("samples", grid, step)

    last_step = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    stream = recipe.batches(step)
    sums: dict[str, Any] = {}
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(
        total=cfg.steps, initial=step, unit="it", dynamic_ncols=True, desc=name, smoothing=0.1,
        disable=not ctx.is_main,
    )  # fmt: skip
    with _GracefulStop() as stop:
        try:
            # a signal on any rank stops every rank after the same step
            while step < last_step and not ctx.any(stop.requested):
                metrics = recipe.train_step(next(stream), step)
                for g, e in ema.items():
                    e.update(nets[g], step)
                for sch in recipe.schedulers.values():
                    sch.step()
                step += 1
                bar.update(1)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + (v.detach().float() if isinstance(v, Tensor) else float(v))
                window_steps += 1

                if (cfg.log_every > 0 and step % cfg.log_every == 0) or step == last_step:
                    rate = window_steps / max(1e-9, time.perf_counter() - window_start)
                    means = ctx.mean({k: float(v) / window_steps for k, v in sums.items()})  # over ranks
                    if writer is not None:
                        for k, v in means.items():
                            writer.add_scalar(f"train/{k}", v, step)
                        for k, opt in recipe.optimizers.items():
                            writer.add_scalar(f"lr/{k}", opt.param_groups[0]["lr"], step)
                        writer.add_scalar("speed/it_per_s", rate, step)
                    if any(not math.isfinite(v) for v in means.values()):
                        raise FloatingPointError(
                            f"step {step}: non-finite loss {means}; lower the lr or use fp32"
                        )
                    text = " ".join(f"{k}={v:.4f}" for k, v in means.items())
                    if ctx.is_main:
                        bar.write(f"step {step}/{cfg.steps} {text} ({rate:.2f} it/s)")
                    sums, window_start, window_steps = {}, time.perf_counter(), 0
                if (
                    ctx.is_main
                    and cfg.sample_every > 0
                    and (step % cfg.sample_every == 0 or step == cfg.steps)
                ):
                    sample()
                if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
                    save()
        except KeyboardInterrupt:
            # second Ctrl-C: the step may be half applied, so keep the last consistent checkpoint
            bar.close()
            print(f"aborted; the last checkpoint is at step {saved_step} ({last_path})", file=sys.stderr)
            raise
        finally:
            bar.close()
        interrupted = ctx.any(stop.requested)
        if ctx.any(step != saved_step or (ctx.is_main and not last_path.is_file())):
            save()
    ctx.barrier()  # no rank leaves before rank 0 has written the last checkpoint
    if writer is not None:
        writer.close()
    if step < cfg.steps and ctx.is_main:
        print(f"stopped at step {step} of {cfg.steps}; continue with --resume --out {run_dir}")
    return 130 if interrupted else 0


def cli_train(
    name: str,
    config_cls: type,
    build: Callable[[Any, Runtime], Recipe],
    args: argparse.Namespace,
    prepare: Callable[[Any], Any] | None = None,
) -> int:
    """``run(args)`` of a recipe: config from the command line, then :func:`train`. ``prepare(cfg)``
    fills in what the data decides (e.g. the class names); those fields are not "explicit", so on
    ``--resume`` the saved values win. Mistakes the user can fix (bad option, missing data or file,
    existing run) print one line instead of a traceback."""
    try:
        cfg, explicit = config_from_args(config_cls, args)
        if prepare is not None:
            cfg = prepare(cfg)
        return train(name, cfg, build, explicit)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:  # FileNotFoundError: also EmptyFolderError
        print(f"transfigure train {name}: error: {e}", file=sys.stderr)
        return 2
