"""The model card: the one contract between training (writes cards) and serving (reads them).

A shipped model lives in ``models/<name>/`` as ``model.onnx`` + ``card.json``. The card says what
the service needs to run the model (task, tensor names, input contract, classes, scale) and what
a user needs to trust it (training data, recipe, measured metrics with the command that measured
them). This module imports nothing heavier than pydantic so that both sides can use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
CARD_FILE = "card.json"

# ONNX tensor names. Fixed by convention so that export and service cannot disagree.
IMAGE_INPUT = "image"  # translate / upscale: N x C x H x W float32 in the card's input range
Z_INPUT = "z"  # sample: N x latent_dim float32
LABEL_INPUT = "label"  # sample: N int64 class indices
OUTPUT = "output"  # every task: N x C x H' x W' float32 in the card's output range

Task = Literal["translate", "sample", "upscale"]
Method = Literal["cyclegan", "pix2pix", "cgan", "srgan"]


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


class Metric(_Strict):
    name: str
    value: float
    split: str
    protocol: str
    command: str


class ModelCard(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    task: Task
    method: Method
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
    precision: Literal["fp32", "int8"] = "fp32"
    input: InputSpec | None = None
    output: ImageSpec
    scale: int | None = Field(default=None, ge=2)
    classes: list[str] | None = None
    latent_dim: int | None = Field(default=None, ge=1)
    output_size: int | None = Field(default=None, ge=1)
    training: TrainingInfo
    metrics: list[Metric] = Field(default_factory=list)
    headline_metric: str | None = Field(default=None, description="name of the metric to show in listings")
    notes: str = ""

    @field_validator("onnx_file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in {"", ".", ".."}:
            raise ValueError("must be a plain file name inside the model folder")
        return v

    @model_validator(mode="after")
    def _task_fields(self) -> ModelCard:
        need: dict[str, tuple[str, ...]] = {
            "translate": ("input",),
            "upscale": ("input", "scale"),
            "sample": ("classes", "latent_dim", "output_size"),
        }
        forbid: dict[str, tuple[str, ...]] = {
            "translate": ("scale", "classes", "latent_dim", "output_size"),
            "upscale": ("classes", "latent_dim", "output_size"),
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
        return self

    # -- helpers -------------------------------------------------------------------------------
    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def headline(self) -> Metric | None:
        if self.headline_metric:
            return self.metric(self.headline_metric)
        return self.metrics[0] if self.metrics else None

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
        path = Path(folder) / CARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

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
        if not isinstance(data, dict):
            raise CardError(f"{source}: a card must be a JSON object, got {type(data).__name__}")
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
