"""Which onnxruntime execution provider the model sessions run on: CUDA when there is one, else the CPU.

``TRANSFIGURE_PROVIDERS`` (``service.config``) is ``auto`` or a comma-separated list of ``cuda`` and
``cpu`` in order of preference (``cuda,cpu``, ``cpu``):

* ``auto`` runs on CUDA when onnxruntime offers ``CUDAExecutionProvider`` (the ``serve-gpu`` extra,
  ``onnxruntime-gpu``, on a machine with an NVIDIA GPU), else on the CPU; the choice is logged once.
* A list naming ``cuda`` refuses to start, naming the setting, when onnxruntime does not offer it,
  or when it offers it but cannot open it (missing CUDA / cuDNN libraries: onnxruntime would fall
  back to the CPU without an error).

On CUDA each model has one session whose device memory arena is limited to
``TRANSFIGURE_GPU_MEM_LIMIT`` bytes; requests are admitted by the same pixel budget as on the CPU
(``service.admission``), and a large image still runs alone (``service.zoo.InferenceSlots``).

INT8 files: the shipped INT8 models are QDQ graphs quantised for the CPU provider, whose graph
optimiser fuses each QuantizeLinear/DequantizeLinear group into an int8 kernel. The CUDA provider
has no such fusion for convolutions (Hugging Face Optimum's GPU guide: quantised models are not
accelerated on it; INT8 on NVIDIA GPUs is TensorRT's provider), so there the convolutions run in
float between the quantise/dequantise nodes: expect no speed-up over the fp32 file, the INT8
rounding kept, and possibly nodes left to the CPU. A card's ``gpu_file`` (``transfigure export
--int8 --gpu-fp32``) names the fp32 file that CUDA runs instead. None of this has been measured on
a GPU yet; ``tests/gpu/check.sh`` times every shipped file on both providers.

``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` module, each over the
other's files; pip cannot keep one extra from installing alongside the other, so the service
refuses to start where it finds both installed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import onnxruntime as ort

from service.config import AUTO, PROVIDER_WORDS, SettingsError, normalise_providers, variable

log = logging.getLogger("transfigure.providers")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NAMES = dict(zip(PROVIDER_WORDS, (CUDA, CPU), strict=True))  # the setting's words -> onnxruntime's names
SHORT = {v: k for k, v in NAMES.items()}
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu")  # both install the module `onnxruntime`
GPU_INSTALL = "pip install -e '.[serve-gpu]' into a fresh virtualenv"


class ProviderError(SettingsError):
    """The providers asked for cannot be used here; the message names the setting and what to do."""


def parse_providers(value: str) -> tuple[str, ...]:
    """A ``TRANSFIGURE_PROVIDERS`` value as words: ``"CUDA, cpu"`` -> ``("cuda", "cpu")``, ``auto`` ->
    ``("auto",)``. Raises ValueError naming the valid words."""
    return tuple(normalise_providers(value).split(","))


def installed_runtime_packages() -> list[str]:
    """The onnxruntime distributions installed in this environment (normally exactly one)."""
    found = set()
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower()
        if name in RUNTIME_PACKAGES:
            found.add(name)
    return sorted(found)


def check_one_runtime(packages: Iterable[str]) -> None:
    """Refuse an environment with both ``onnxruntime`` and ``onnxruntime-gpu`` installed."""
    packages = sorted(set(packages))
    if len(packages) > 1:
        raise ProviderError(
            f"both {' and '.join(packages)} are installed: they install the same `onnxruntime` module "
            "over each other's files, so which one runs is an accident. Install one: "
            f"`pip uninstall -y {' '.join(packages)}`, then `pip install -e '.[serve]'` (CPU) or "
            f"`pip install -e '.[serve-gpu]'` (CUDA), or start from a fresh virtualenv"
        )


@dataclass(frozen=True)
class ProviderPlan:
    """The providers every model session is opened with, in order, and how they were chosen."""

    providers: tuple[str, ...] = (CPU,)  # onnxruntime names
    explicit: bool = False  # named in TRANSFIGURE_PROVIDERS (then a CUDA that cannot open refuses)
    gpu_mem_limit: int = 0  # bytes per CUDA session arena; 0: no limit

    @property
    def uses_cuda(self) -> bool:
        return CUDA in self.providers

    def session_providers(self) -> list[Any]:
        """The ``providers`` argument of ``ort.InferenceSession``, with the CUDA provider's options."""
        out: list[Any] = []
        for name in self.providers:
            if name == CUDA:
                options = {
                    # the arena grows by what a request needs, not to the next power of two
                    "arena_extend_strategy": "kSameAsRequested",
                    # inputs come at every size: an exhaustive cuDNN search would run again per new shape
                    "cudnn_conv_algo_search": "HEURISTIC",
                }
                if self.gpu_mem_limit:
                    options["gpu_mem_limit"] = str(self.gpu_mem_limit)
                out.append((name, options))
            else:
                out.append(name)
        return out

    def check_session(self, session: ort.InferenceSession, what: str) -> str:
        """The provider a new session runs on (``cuda`` / ``cpu``); raises ProviderError where an
        explicitly named CUDA provider did not open (onnxruntime then silently runs on the CPU)."""
        used = session.get_providers()
        if self.uses_cuda and CUDA not in used:
            message = (
                f"{what}: onnxruntime offers {CUDA} but could not open it (see onnxruntime's error above: "
                "usually a CUDA or cuDNN library that onnxruntime-gpu needs is missing or of another "
                "version); the session runs on the CPU"
            )
            if self.explicit:
                raise ProviderError(
                    f"environment variable {variable('providers')} names cuda: {message}. Fix the CUDA "
                    f"installation or set {variable('providers')}=auto or cpu"
                )
            log.warning("%s", message)
        return SHORT.get(used[0], used[0]) if used else "cpu"


def resolve_providers(
    setting: Sequence[str] = (AUTO,),
    gpu_mem_limit: int = 0,
    available: Sequence[str] | None = None,
    packages: Iterable[str] | None = None,
    announce: bool = True,
) -> ProviderPlan:
    """The plan for ``TRANSFIGURE_PROVIDERS`` (parsed, see :func:`parse_providers`) on this machine.

    ``available`` defaults to ``onnxruntime.get_available_providers()`` and ``packages`` to
    :func:`installed_runtime_packages`. ``announce``: log the ``auto`` choice (once per process is
    enough: the service's workers pass False). Raises :class:`ProviderError`.
    """
    packages = installed_runtime_packages() if packages is None else list(packages)
    check_one_runtime(packages)
    offered = list(ort.get_available_providers() if available is None else available)
    name = variable("providers")
    if tuple(setting) == (AUTO,):
        if CUDA in offered:
            plan = ProviderPlan((CUDA, CPU), explicit=False, gpu_mem_limit=gpu_mem_limit)
            choice = f"onnxruntime offers {CUDA}: models run on CUDA"
        else:
            plan = ProviderPlan((CPU,), explicit=False, gpu_mem_limit=gpu_mem_limit)
            choice = f"onnxruntime offers no {CUDA}: models run on the CPU"
            if "onnxruntime-gpu" not in packages:
                choice += f" (for a GPU: {GPU_INSTALL})"
        if announce:
            log.info("%s=auto: %s", name, choice)
        return plan
    wanted = tuple(NAMES[w] for w in setting)
    missing = [w for w, p in zip(setting, wanted, strict=True) if p not in offered]
    if missing:
        raise ProviderError(
            f"environment variable {name}={','.join(setting)!r}: onnxruntime {ort.__version__} offers "
            f"{', '.join(offered)}, not {', '.join(NAMES[w] for w in missing)}. For CUDA: an NVIDIA GPU "
            f"and onnxruntime-gpu ({GPU_INSTALL}); or set {name}=auto (CUDA if there, else CPU) or cpu"
        )
    return ProviderPlan(wanted, explicit=True, gpu_mem_limit=gpu_mem_limit)


def plan_from_settings(settings: Any, announce: bool = True) -> ProviderPlan:
    """:func:`resolve_providers` for a :class:`service.config.Settings`."""
    return resolve_providers(
        parse_providers(settings.providers), gpu_mem_limit=settings.gpu_mem_limit, announce=announce
    )
