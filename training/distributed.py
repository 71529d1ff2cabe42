"""Training on several processes, with PyTorch's own distributed stack.

A run is distributed when ``torchrun`` starts it with more than one process (``WORLD_SIZE`` > 1 in
the environment)::

    torchrun --nproc-per-node 4 -m training.cli train cyclegan --data DIR --out runs/s2w --resume

Every rank builds the same recipe; :func:`training.loop.train` then uses this module to

* join the process group (gloo for CPU tensors, NCCL for CUDA tensors; one process per GPU, the
  GPU of ``LOCAL_RANK``),
* wrap every net that an optimizer trains in :class:`DistributedDataParallel` (gradients are
  averaged over the ranks), with batch norm as :class:`~torch.nn.SyncBatchNorm` on CUDA,
* give each rank its own slice of every global batch (:func:`rank_and_world`, read by
  ``data_stream``) and its own RNG stream (:func:`rank_seed`),
* agree on stopping (SIGTERM on any rank stops all of them after the same step) and gather every
  rank's RNG and recipe state into rank 0's checkpoints.

Nothing here knows a recipe: recipes call their nets as usual and get the wrapped ones.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain, single-process run), also before or after the process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNG stream. Rank 0 uses ``seed`` itself, so a single process and
    rank 0 of many start from the same weights; other ranks get well-mixed seeds of their own."""
    if rank == 0:
        return seed
    entropy = [seed & 0xFFFFFFFF, 2, rank]  # stream 2: per-rank RNG (see training.loop.item_seed)
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class Context:
    """This process's place in the run. ``world_size == 1``: a plain run, every method is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the default group (and destroys it)
    control: Any = field(default=None, repr=False)  # a gloo group for small CPU-side collectives

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives on the CPU (gloo), so a GPU run is not synchronised by them ----------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank passes the same keys)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (tensors moved to the CPU), as a list on rank 0; None elsewhere."""
        if not self.distributed:
            return [obj]
        obj = to_cpu(obj)
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group, self.control = False, None


def init_from_env() -> Context:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without it, or with one
    process, the run is a plain one. The default group carries CPU tensors over gloo and CUDA
    tensors over NCCL, so the device the config names decides which one the gradients use."""
    if not dist.is_available():
        return Context()
    owns = not dist.is_initialized()
    if owns and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if owns:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            kwargs.update(_agent_store())
        dist.init_process_group(**kwargs)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world <= 1:
        return Context(owns_group=owns)
    control = dist.new_group(backend="gloo")
    return Context(rank, world, local, owns, control)


def _agent_store() -> dict[str, Any]:
    """The store of torchrun's agent, under a prefix of its own for each restart of the workers.

    The agent keeps one store for all restarts (``--max-restarts``): a restarted group that joins
    it as is reads the keys of the group before it and connects to ranks that are gone
    (pytorch/pytorch#135712). The restart count is the same on every rank of a single node, and
    on every node while all agents live; where nodes come and go, start torchrun with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a fresh store each round, so this path is not taken).
    """
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
        timeout=datetime.timedelta(minutes=5),
    )  # fmt: skip
    return {
        "store": dist.PrefixStore(f"transfigure/attempt_{attempt}", store),
        "rank": rank,
        "world_size": world,
    }


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------
# batch norm
# ------------------------------------------------------------------------------------------------
_BATCH_NORM_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


def sync_batch_norm(net: nn.Module) -> nn.Module:
    """Every batch-norm layer of ``net`` as SyncBatchNorm (statistics over the global batch), in
    place; parameters and buffers are the same tensors, so optimizers and state dicts still fit."""
    kinds = {
        name: _BATCH_NORM_DIMS[type(m)] for name, m in net.named_modules() if type(m) in _BATCH_NORM_DIMS
    }
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, m in net.named_modules():
        if isinstance(m, nn.SyncBatchNorm) and name in kinds:
            m.plain_dims = kinds[name]  # SyncBatchNorm has no kind of its own; plain_batch_norm needs it
    return net


def plain_batch_norm(net: nn.Module) -> nn.Module:
    """The inverse of :func:`sync_batch_norm`: SyncBatchNorm layers back to BatchNorm1d/2d/3d,
    sharing parameters and buffers; for a copy that runs in one process (EMA, sampling, export)."""
    if isinstance(net, nn.SyncBatchNorm):
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[getattr(net, "plain_dims", 2)]
        out = cls(net.num_features, net.eps, net.momentum, net.affine, net.track_running_stats)
        if net.affine:
            out.weight, out.bias = net.weight, net.bias
        if net.track_running_stats:
            out.running_mean, out.running_var = net.running_mean, net.running_var
            out.num_batches_tracked = net.num_batches_tracked
        return out.train(net.training)
    for name, child in list(net.named_children()):
        converted = plain_batch_norm(child)
        if converted is not child:
            setattr(net, name, converted)
    return net


# ------------------------------------------------------------------------------------------------
# DistributedDataParallel around a recipe's nets
# ------------------------------------------------------------------------------------------------
class FrozenAwareDDP(DistributedDataParallel):
    """DistributedDataParallel that steps aside while none of its net's parameters needs a gradient.

    GAN recipes freeze the discriminator (``requires_grad_(False)``) and train the generator through
    it; called through DDP, that forward would make DDP wait for discriminator gradients the
    backward never produces. Frozen, the net is called directly: gradients still flow through it to
    its inputs, and its weights are identical on every rank anyway."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not any(p.requires_grad for p in self.module.parameters()):
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


def _optimised_parameters(optimizers: Iterable[torch.optim.Optimizer]) -> set[int]:
    return {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}


def wrap_recipe(recipe: Any, device: torch.device) -> dict[str, nn.Module]:
    """Put every net of ``recipe.nets`` that an optimizer trains into DDP (SyncBatchNorm first on
    CUDA), and point the recipe at the wrapped nets: ``recipe.nets`` and any attribute of the recipe
    that held the same net (e.g. ``self.G``). Returns the unwrapped nets by name, which the loop
    checkpoints, averages (EMA) and samples."""
    plain = dict(recipe.nets)
    trained = _optimised_parameters(recipe.optimizers.values())
    wrapped: dict[str, nn.Module] = {}
    for name, net in plain.items():
        if not any(id(p) in trained for p in net.parameters()):
            continue  # nothing to average (e.g. a frozen feature extractor)
        ids = None
        if device.type == "cuda":
            if sync_batch_norm(net) is not net:  # the net itself is a batch-norm layer
                raise TypeError(f"net '{name}' is a bare batch-norm layer; wrap it in a module")
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        wrapped[name] = FrozenAwareDDP(net, device_ids=ids)
    for attr, value in list(vars(recipe).items()):
        for name, net in plain.items():
            if value is net and name in wrapped:
                setattr(recipe, attr, wrapped[name])
    recipe.nets = {name: wrapped.get(name, net) for name, net in plain.items()}
    return plain
