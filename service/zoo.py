"""The model zoo at serving time: find the cards, check each ONNX file, open one session per model.

Shared by the HTTP service and the batch job; imports no BentoML and no torch. A model is usable
only if its card validates, its file exists with the card's sha256, and its ONNX graph has the
tensor names the card's task promises. ``Zoo.load(strict=True)`` refuses to start on the first
problem (the message names the file); ``strict=False`` skips the model and records why in
``zoo.unavailable`` so that the service can list it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models import card_paths, zoo_dir
from models.card import (
    BLEND_INPUT,
    IMAGE_INPUT,
    LABEL_INPUT,
    MIX_LAYER_INPUT,
    OUTPUT,
    PSI_INPUT,
    STYLE_INPUTS,
    Z2_INPUT,
    Z_INPUT,
    CardError,
    ModelCard,
)
from service.providers import ProviderPlan

log = logging.getLogger("transfigure.zoo")

TASKS = ("translate", "sample", "upscale")
# ONNX inputs each task's graph must have (see CONTRIBUTING.md, "ONNX models").
TASK_INPUTS = {"translate": (IMAGE_INPUT,), "upscale": (IMAGE_INPUT,), "sample": (Z_INPUT, LABEL_INPUT)}


def graph_inputs(card: ModelCard) -> tuple[str, ...]:
    """The ONNX inputs ``card``'s graph must have: its task's, or a style sampler's (card ``style``)."""
    return STYLE_INPUTS if card.style is not None else TASK_INPUTS[card.task]


class ModelNotFound(ValueError):
    """An unknown (or unavailable) model name; the message lists the valid ones."""


class WrongTask(ValueError):
    """A model used by an endpoint of another task; the message lists the models that fit."""


# -- CPUs and session options ------------------------------------------------------------------


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct", "."):
        try:
            quota_us = int((root / sub / "cpu.cfs_quota_us").read_text())
            period_us = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    return None


def cpu_count(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may really use: affinity mask, capped by the cgroup quota (a pod's limit).

    ``os.cpu_count()`` reports the node's cores, which would oversubscribe a pod limited to 2.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def resolved_threads(threads: int | None = None, workers: int = 1) -> int:
    """onnxruntime intra-op threads of one session: ``threads``, else this pod's CPUs // workers."""
    return max(1, int(threads) if threads else cpu_count() // max(1, int(workers)))


def session_options(threads: int | None = None, workers: int = 1) -> ort.SessionOptions:
    """ORT options for one session of one of ``workers`` processes sharing this pod's CPUs.

    Threads default to available CPUs // workers. Spinning (ORT's busy-wait between ops) is turned
    off when processes share cores, where it would burn the CPU the other workers need.
    """
    workers = max(1, int(workers))
    cpus = cpu_count()
    intra = resolved_threads(threads, workers)
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings from ORT go to stderr unformatted; keep errors only
    if workers > 1 or intra * workers > cpus:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


# -- inference lanes ---------------------------------------------------------------------------

_LANE = threading.local()


class SlotExpired(TimeoutError):
    """A request's turn in the inference lanes did not come before its deadline (``slot(deadline=...)``)."""


class _Waiter:
    __slots__ = ("exclusive", "event", "granted", "wide")

    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive
        self.event = threading.Event()
        self.granted = False
        self.wide = False


class InferenceSlots:
    """Who runs an inference now, and on how many threads: latency when alone, throughput under load.

    onnxruntime's intra-op threads scale poorly on these small generators (2 threads: ~1.4x one
    thread for an INT8 CycleGAN at 256 px), so under load ``lanes`` inferences on one thread each do
    more work per second than one on ``lanes`` threads (measured +30 % requests/s at 16 concurrent
    requests), while a request that finds the server idle is fastest on all threads. ``slot()``
    decides when a request gets to run: *wide* (the model's full session, every permit) if nothing
    runs and nobody else waits, else *narrow* (its one-thread session, one of ``lanes`` permits).
    ``lanes=1`` is the plain one-at-a-time semaphore.

    Waiting requests form one queue and are served first come, first served (a ticket queue: each
    waiter has its own event and only the head of the queue may start), so no request is overtaken
    and none starves; a ``deadline`` (``time.monotonic()`` seconds) takes a waiter out of the queue
    when its turn has not come by then (``SlotExpired``).

    ``slot(exclusive=True)`` (a large image) waits until nothing runs, runs wide and alone, and holds
    back requests that arrive while it waits: a large inference holds memory in proportion to its
    pixels, so at most one such working set is in memory at a time.
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = max(1, int(lanes))
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._running = 0
        self._wide = False

    @property
    def running(self) -> int:
        """Inferences holding a slot now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Inferences waiting for a slot now (exclusive ones included)."""
        return len(self._queue)

    def _dispatch(self) -> None:
        """Start waiters from the head of the queue while they may start (under the lock)."""
        while self._queue and not self._wide:
            head = self._queue[0]
            if self._running >= (1 if head.exclusive else self.lanes):
                return
            self._queue.popleft()
            wide = head.exclusive or self.lanes == 1 or (self._running == 0 and not self._queue)
            self._running += 1
            self._wide = wide and self.lanes > 1
            head.wide, head.granted = wide, True
            head.event.set()

    @contextmanager
    def slot(self, exclusive: bool = False, deadline: float | None = None) -> Iterator[bool]:
        """Hold a slot for one inference; yields True when it runs wide (on every thread).

        ``deadline``: give up waiting then (``time.monotonic()`` seconds) and raise ``SlotExpired``.
        """
        waiter = _Waiter(exclusive)
        with self._lock:
            self._queue.append(waiter)
            self._dispatch()
        if not waiter.granted:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            waiter.event.wait(timeout)
            with self._lock:
                if not waiter.granted:
                    self._queue.remove(waiter)
                    self._dispatch()  # an exclusive waiter leaving may let the ones behind it start
                    raise SlotExpired("the request's turn did not come before its deadline")
        wide = waiter.wide
        token = getattr(_LANE, "narrow", False)
        _LANE.narrow = not wide
        try:
            yield wide
        finally:
            _LANE.narrow = token
            with self._lock:
                self._running -= 1
                if wide:
                    self._wide = False
                self._dispatch()


# -- one model ---------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A validated card with its open onnxruntime session."""

    name: str
    card: ModelCard
    path: Path
    session: ort.InferenceSession
    narrow_session: ort.InferenceSession | None = None  # one thread, for InferenceSlots' narrow lanes
    provider: str = "cpu"  # where the session runs: cpu | cuda (service.providers)

    @property
    def task(self) -> str:
        return self.card.task

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph and return its ``output`` tensor (on one thread inside a narrow slot)."""
        session = self.session
        if self.narrow_session is not None and getattr(_LANE, "narrow", False):
            session = self.narrow_session
        return session.run([OUTPUT], feeds)[0]

    def warmup_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Feeds of the model's native shape (used for warm-up and benchmarks)."""
        card = self.card
        if card.task == "sample":
            assert card.latent_dim is not None
            feeds = {
                Z_INPUT: np.zeros((batch, card.latent_dim), np.float32),
                LABEL_INPUT: np.zeros((batch,), np.int64),
            }
            if card.style is not None:  # no truncation, no mixing
                feeds[PSI_INPUT] = np.ones((batch,), np.float32)
                feeds[Z2_INPUT] = np.zeros((batch, card.latent_dim), np.float32)
                feeds[MIX_LAYER_INPUT] = np.full((batch,), card.style.layers, np.int64)
                feeds[BLEND_INPUT] = np.zeros((batch,), np.float32)
            return feeds
        assert card.input is not None
        m = card.input.multiple_of
        side = max(m, math.ceil(card.input.native_size / m) * m)
        return {IMAGE_INPUT: np.zeros((batch, card.input.channels, side, side), np.float32)}

    def warmup(self) -> None:
        """One inference at native size per session, so that no request pays ORT's lazy setup."""
        feeds = self.warmup_feeds()
        for session in (self.session, self.narrow_session):
            if session is not None:
                session.run([OUTPUT], feeds)


def _check_graph(card: ModelCard, session: ort.InferenceSession, onnx_path: Path) -> None:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    wanted = graph_inputs(card)
    missing = [n for n in wanted if n not in inputs]
    if missing or OUTPUT not in outputs:
        kind = "style-based 'sample'" if card.style is not None else f"'{card.task}'"
        raise CardError(
            f"{onnx_path}: a {kind} model needs inputs {list(wanted)} and output "
            f"'{OUTPUT}', the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; re-export it"
        )


def load_model(
    card_path: Path,
    threads: int | None = None,
    workers: int = 1,
    narrow: bool = False,
    providers: ProviderPlan | None = None,
) -> LoadedModel:
    """Validate one ``<name>/card.json`` + its ONNX file and open the session; raises CardError.

    ``narrow`` also opens a one-thread session (for ``InferenceSlots``) when the main one has more.
    ``providers`` (default: the CPU) says where the session runs; on CUDA the card's ``gpu_file``
    is run when it names one, and there is no narrow session (CPU threads are not what is shared).
    Raises ``service.providers.ProviderError`` where an explicitly asked-for CUDA cannot open.
    """
    plan = providers or ProviderPlan()
    card = ModelCard.load(card_path)
    onnx_path = card.verify_file(card_path.parent)
    if plan.uses_cuda:
        onnx_path = card.verify_gpu_file(card_path.parent) or onnx_path
        narrow = False
    try:
        session = ort.InferenceSession(
            str(onnx_path),
            sess_options=session_options(threads, workers),
            providers=plan.session_providers(),
        )
        narrow_session = None
        if narrow and resolved_threads(threads, workers) > 1:
            narrow_session = ort.InferenceSession(
                str(onnx_path), sess_options=session_options(1, workers), providers=plan.session_providers()
            )
    except Exception as e:  # ORT raises its own exception types for unreadable graphs
        raise CardError(f"{onnx_path}: onnxruntime cannot load the model ({e})") from None
    provider = plan.check_session(session, str(onnx_path))
    _check_graph(card, session, onnx_path)
    model = LoadedModel(
        name=card.name,
        card=card,
        path=onnx_path,
        session=session,
        narrow_session=narrow_session,
        provider=provider,
    )
    _check_output(model)
    return model


def _check_output(model: LoadedModel) -> None:
    """Run the model once at its native size and compare the output's shape with the card's promise.

    The tensor names alone do not tell a translate graph from an upscale one: a swapped model.onnx
    whose card was re-hashed would load, then fail every request with a 500. (This run is also the
    warm-up of ORT's lazy initialisation.)
    """
    card = model.card
    feeds = model.warmup_feeds()
    try:
        y = model.run(feeds)
    except Exception as e:  # ORT's own exception types: a graph that cannot run its native size
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        raise CardError(f"{model.path}: onnxruntime fails on inputs {shapes} ({e}); re-export it") from None
    if card.task == "sample":
        side = card.output_size or 0
    else:
        side = feeds[IMAGE_INPUT].shape[-1] * (card.scale or 1 if card.task == "upscale" else 1)
    want = (1, card.output.channels, side, side)
    if tuple(y.shape) != want:
        raise CardError(
            f"{model.path}: the graph returns shape {tuple(y.shape)} where its '{card.task}' card promises "
            f"{want}; is this the right model.onnx for this card? Re-export the model"
        )


def check_cards(
    root: Path | None = None, names: list[str] | None = None, strict: bool = True
) -> tuple[list[ModelCard], dict[str, str]]:
    """Validate cards and sha256 without opening sessions (cheap: for start-up checks and CLIs).

    Returns (good cards, {folder name: problem}); strict raises CardError at the first problem.
    """
    root = Path(root) if root is not None else zoo_dir()
    cards: list[ModelCard] = []
    problems: dict[str, str] = {}
    for path in card_paths(root):
        if names and path.parent.name not in names:
            continue
        try:
            card = ModelCard.load(path)
            card.verify_file(path.parent)
            card.verify_gpu_file(path.parent)
        except CardError as e:
            if strict:
                raise
            problems[path.parent.name] = str(e)
            continue
        cards.append(card)
    return cards, problems


# -- the zoo -----------------------------------------------------------------------------------


@dataclass
class Zoo:
    """The usable models by name, plus the ones that could not be loaded and why."""

    root: Path
    models: dict[str, LoadedModel] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        root: Path | None = None,
        names: list[str] | None = None,
        strict: bool = True,
        threads: int | None = None,
        workers: int = 1,
        narrow: bool = False,
        providers: ProviderPlan | None = None,
    ) -> Zoo:
        """Open every model under ``root`` (default: ``models.zoo_dir()``), or only ``names``.

        strict: the first unusable model raises CardError naming its file. Otherwise it is skipped
        and recorded in ``unavailable`` (name -> reason). ``narrow``, ``providers``: see ``load_model``.
        """
        root = Path(root) if root is not None else zoo_dir()
        zoo = cls(root=root)
        wanted = set(names) if names else None
        for path in card_paths(root):
            folder_name = path.parent.name
            if wanted is not None and folder_name not in wanted:
                # cheap pre-filter by folder; the card name is checked again below
                try:
                    if ModelCard.load(path).name not in wanted:
                        continue
                except CardError:
                    continue
            try:
                model = load_model(path, threads=threads, workers=workers, narrow=narrow, providers=providers)
                if model.name in zoo.models:
                    raise CardError(
                        f"{path}: model name '{model.name}' is already used by {zoo.models[model.name].path}"
                    )
            except CardError as e:
                if strict:
                    raise
                log.warning("model unavailable: %s", e)
                zoo.unavailable[folder_name] = str(e)
                continue
            zoo.models[model.name] = model
        for name in sorted((wanted or set()) - set(zoo.models) - set(zoo.unavailable)):
            msg = f"{root / name}: model '{name}' was asked for but has no card.json in the zoo"
            if strict:
                raise CardError(msg)
            zoo.unavailable[name] = msg
        return zoo

    # -- look-up -------------------------------------------------------------------------------
    def names(self, task: str | None = None) -> list[str]:
        return sorted(n for n, m in self.models.items() if task is None or m.card.task == task)

    def cards(self) -> list[ModelCard]:
        return [self.models[n].card for n in self.names()]

    def get(self, name: str, task: str | None = None) -> LoadedModel:
        """The model called ``name``; with ``task``, it must be of that task (else WrongTask)."""
        fitting = self.names(task)
        listing = ", ".join(fitting) if fitting else "(none loaded)"
        model = self.models.get(name)
        if model is None:
            if name in self.unavailable:
                raise ModelNotFound(
                    f"model '{name}' is unavailable (failed to load at start-up); available: {listing}"
                )
            raise ModelNotFound(f"unknown model '{name}': available: {listing}")
        if task is not None and model.card.task != task:
            raise WrongTask(f"model '{name}' is a '{model.card.task}' model; /{task} needs one of: {listing}")
        return model

    def warmup(self) -> None:
        for name in self.names():
            self.models[name].warmup()

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self.models[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.models


def preflight(
    root: Path | None = None, names: list[str] | None = None, providers: ProviderPlan | None = None
) -> None:
    """Raise ``CardError`` naming the first bad card or file: cards and sha256 first (cheap), then
    every model opened once and run at its native size (a file whose hash matches its card but that
    onnxruntime cannot load or run must stop a server before it starts too), on ``providers``."""
    check_cards(root, names, strict=True)
    Zoo.load(root, names=names, strict=True, threads=1, workers=1, providers=providers)
