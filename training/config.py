"""Recipe configuration: typed dataclasses, their command line, their validation and their argv.

Every recipe's ``Config`` is a dataclass deriving from :class:`TrainConfig`; each field is one knob
with its default and ``metadata["help"]``. From it come the ``--kebab-case`` options
(:func:`add_config_arguments`), the config of a run (:func:`config_from_args`), the saved config
rebuilt from a checkpoint or a card (:func:`config_from_dict`, which also reads knobs by their former
names, :class:`Renamed`) and the command line that sets given values (:func:`config_to_argv`).
A field with ``metadata["choices"]`` is checked in one place, :func:`check_choices`, both on the
command line and whenever a config is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Fields a resumed run may change (where the run lives, how long it goes on, how it is logged and on
# what hardware). Anything else that differs from the saved config would silently start a different
# experiment, so resuming with it is refused.
RESUME_OVERRIDABLE = frozenset(
    {
        "data",
        "out",
        "steps",
        "resume",
        "device",
        "precision",
        "num_workers",
        "ckpt_every",
        "log_every",
        "sample_every",
        "keep_checkpoints",
    }
)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A configuration that cannot be trained; the message says what to change."""


@dataclass(frozen=True)
class Renamed:
    """A knob's former name: configs saved under it are still read, and ``--old-name`` still works
    (hidden from ``--help``). ``convert`` turns an old value into the new field's value."""

    new: str
    convert: Callable[[Any], Any] | None = None


@dataclass
class TrainConfig:
    """Fields every recipe's ``Config`` inherits. Help texts come from ``metadata["help"]``; a field
    with ``metadata["choices"]`` only takes one of them, after ``metadata["canonical"]`` (if any) has
    put an alias into canonical form. ``renamed`` maps former field names to current ones."""

    renamed: ClassVar[Mapping[str, Renamed]] = {}

    data: str = field(default="", metadata={"help": "dataset folder"})
    out: str = field(default="", metadata={"help": "run folder (default: runs/<recipe>)"})
    steps: int = field(default=10_000, metadata={"help": "total optimisation steps (iterations)"})
    batch_size: int = field(
        default=1, metadata={"help": "images per step and process (under torchrun: x the world size)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for weights, data order and augmentation"})
    device: str = field(
        default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (CUDA: bf16 where the GPU supports it, else fp16 with a grad scaler; CPU: bf16 "
            "where native, else fp32), fp32, bf16, fp16 (CUDA only)",
            "choices": PRECISIONS,
        },
    )
    ckpt_every: int = field(default=1000, metadata={"help": "write a checkpoint every N steps"})
    log_every: int = field(default=100, metadata={"help": "print and log losses every N steps"})
    sample_every: int = field(default=1000, metadata={"help": "write a sample grid every N steps (0: never)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "step_*.pt files to keep (0: keep all)"})
    ema_decay: float = field(default=0.0, metadata={"help": "EMA of generator weights, e.g. 0.999 (0: off)"})
    num_workers: int = field(default=2, metadata={"help": "data loading processes (0: in the main process)"})
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from checkpoints/last.pt"}
    )

    def __post_init__(self) -> None:
        check_choices(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choices(config: Any) -> None:
    """Every field with ``metadata["choices"]`` holds one of them (or None, if the field is optional);
    a ``metadata["canonical"]`` function first maps an alias to its canonical value, in place.
    Raises :class:`ConfigError` naming the option and its valid values."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices is None:
            continue
        value = getattr(config, f.name)
        if value is None and _optional_of(hints[f.name]) is not None:
            continue
        canonical = f.metadata.get("canonical")
        if canonical is not None:
            value = canonical(value)
            setattr(config, f.name, value)
        if value not in choices:
            valid = ", ".join(str(c) for c in choices)
            raise ConfigError(
                f"unknown {f.name.replace('_', ' ')} {value!r} ({_flag(f.name)}): choose one of {valid}"
            )


def _field_type(config_cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(config_cls)[f.name]


def _optional_of(tp: Any) -> Any | None:
    """``int`` for ``int | None`` / ``Optional[int]``; None when ``tp`` is not optional."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _none_or(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in {"none", "null", ""} else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type,
    aliases: dict[str, list[str]] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """One ``--kebab-case`` option per dataclass field (plus ``aliases``: field -> extra flags, and a
    hidden ``--old-name`` for each of ``config_cls.renamed``).

    Defaults are not put into ``args`` (argparse.SUPPRESS) so that :func:`config_from_args` knows
    which options the user actually typed — that is what ``--resume`` may override. The help text
    shows each field's default, so a reader finds every knob and its value in ``--help``.
    """
    aliases = aliases or {}
    skip = set(skip)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for f in fields.values():
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f.metadata.get("help", "")
        kwargs = _argument_kwargs(config_cls, f)
        kwargs["help"] = f"{help_} (default: {default!r})".strip() if help_ else f"(default: {default!r})"
        parser.add_argument(_flag(f.name), *aliases.get(f.name, []), **kwargs)
    for old, renamed in config_cls.renamed.items():
        if renamed.new in fields and renamed.new not in skip:
            kwargs = _argument_kwargs(config_cls, fields[renamed.new], renamed.convert)
            parser.add_argument(_flag(old), **kwargs, help=argparse.SUPPRESS)


def _argument_kwargs(
    config_cls: type, f: dataclasses.Field, convert: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """``add_argument`` keywords that parse a field's value (``convert``: from a former name's value)."""
    tp = _field_type(config_cls, f)
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    inner = _optional_of(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    if typing.get_origin(tp) is tuple:
        parse: Callable[[str], Any] = typing.get_args(tp)[0]
        kwargs["nargs"] = "+"
    elif inner is not None:
        parse = _none_or(inner)
        kwargs["metavar"] = inner.__name__.upper()
    else:
        parse = tp
    for then in (f.metadata.get("canonical"), convert):
        if then is not None:
            parse = _then(parse, then)
    kwargs["type"] = parse
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    return kwargs


def _then(parse: Callable[[str], Any], then: Callable[[Any], Any]) -> Callable[[str], Any]:
    def composed(text: str) -> Any:
        value = parse(text)
        return value if value is None else then(value)

    composed.__name__ = getattr(parse, "__name__", "value")  # argparse names it in its errors
    return composed


def config_from_args(config_cls: type, args: argparse.Namespace) -> tuple[Any, set[str]]:
    """Build ``config_cls`` from parsed args; returns (config, names of the fields given explicitly)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return config_cls(**given), set(given)


def config_from_dict(config_cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a Config from a saved dict (a checkpoint's or a card's): keys under a former name are
    read as the new one (:class:`Renamed`); keys that this version of the recipe lacks are ignored."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    values = dict(data)
    for old, renamed in config_cls.renamed.items():
        if old in values and old not in names:
            value = values.pop(old)
            if renamed.new not in values:
                values[renamed.new] = renamed.convert(value) if renamed.convert else value
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
    return config_cls(**kwargs)


def config_to_argv(config_cls: type, values: Mapping[str, Any]) -> list[str]:
    """The command-line options that set ``values`` (field -> value) on ``config_cls``, in order:
    the inverse of :func:`add_config_arguments` + :func:`config_from_args`. An unknown field raises
    :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    argv: list[str] = []
    for name, value in values.items():
        if name not in names:
            raise ConfigError(f"{config_cls.__module__}.{config_cls.__qualname__} has no field '{name}'")
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            argv += [_flag(name), *(_text(v) for v in value)]
        else:
            argv += [_flag(name), _text(value)]
    return argv


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def check_value_types(config_cls: type, values: Mapping[str, Any]) -> None:
    """Each of ``values`` (field -> value) names a field of ``config_cls`` and has its type (an int
    passes for a float, a path for a str). Raises :class:`ConfigError` on the first that does not."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    for name, value in values.items():
        if name not in names:
            raise ConfigError(f"{config_cls.__module__}.{config_cls.__qualname__} has no field '{name}'")
        if not _has_type(value, hints[name]):
            raise ConfigError(f"{_flag(name)}: expected {hints[name]}, got {type(value).__name__} {value!r}")


def _has_type(value: Any, tp: Any) -> bool:
    inner = _optional_of(tp)
    if inner is not None:
        return value is None or _has_type(value, inner)
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0]
        return isinstance(value, (tuple, list)) and all(_has_type(v, elem) for v in value)
    if isinstance(value, bool) or tp is bool:
        return isinstance(value, bool) and tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    if tp is str:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, tp)


def merge_resume_config(saved: Any, requested: Any, explicit: Iterable[str] | None) -> Any:
    """The config of a resumed run: the saved one, with the explicitly requested changes that are
    allowed (:data:`RESUME_OVERRIDABLE`). A requested change to anything else raises ValueError."""
    explicit = {f.name for f in dataclasses.fields(requested)} if explicit is None else set(explicit)
    changes, refused = {}, []
    for name in sorted(explicit):
        new, old = getattr(requested, name), getattr(saved, name, None)
        if name in RESUME_OVERRIDABLE:
            changes[name] = new
        elif new != old:
            refused.append(f"{name}: run has {old!r}, asked for {new!r}")
    if refused:
        raise ConfigError(
            "cannot resume with a different configuration (" + "; ".join(refused) + "). "
            "Drop those options to continue the run as it was, or start a new run with another --out."
        )
    return dataclasses.replace(saved, **changes)
