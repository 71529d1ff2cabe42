"""Paths as a card records them: portable, never a machine's absolute paths.

A card travels with its model to other machines, where ``/home/someone/runs/x`` means nothing. Export
writes paths relative to the project; :func:`portable_card_paths` rewrites the path fields of a card
written elsewhere (or by an older exporter) the same way when it is loaded. Only the card's JSON is
rewritten; the ONNX file, and so its sha256, is untouched.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PATH_FIELDS = ("data", "out", "init", "val_data", "judge")  # recipe config fields that hold paths


def portable_path(path: str | Path, base: str | Path | None = None, elsewhere: str = "name") -> str:
    """``path`` as a card records it: relative to ``base`` (default: the working directory) when it
    is inside it or beside it (``runs/x``, ``../shared/data/x``); a path elsewhere becomes its file or
    folder name (``elsewhere="name"``) or stays as it is (``"keep"``, for commands a user reruns).
    A machine's absolute paths mean nothing on another one."""
    text = str(path)
    if not text or not os.path.isabs(text):
        return text
    rel = os.path.relpath(text, base or os.getcwd())
    if not rel.startswith(os.path.join("..", "..")):
        return rel
    return Path(text).name if elsewhere == "name" else text


def _portable_word(word: str, base: Path) -> str:
    """One word of a command: an absolute path (alone or as ``--flag=PATH``) made portable."""
    flag, eq, value = word.partition("=")
    if eq and flag.startswith("-"):
        return f"{flag}={portable_path(value, base)}" if os.path.isabs(value) else word
    return portable_path(word, base)


def portable_command(command: str, base: str | Path = PROJECT_ROOT) -> str:
    """A recorded command with every absolute path in it made portable (other words unchanged)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command  # not shell syntax: leave it as written
    if not any(os.path.isabs(w.partition("=")[2] or w) for w in words):
        return command
    return shlex.join(_portable_word(w, Path(base)) for w in words)


def portable_card_paths(data: dict[str, Any], base: str | Path = PROJECT_ROOT) -> dict[str, Any]:
    """A card's JSON object with its data, run and checkpoint paths and its commands made portable.

    Paths inside or beside ``base`` (the project) become relative to it; others become their file or
    folder name. Returns a new object; ``data`` is not changed.
    """
    out = dict(data)
    training = out.get("training")
    if isinstance(training, dict) and isinstance(training.get("recipe_config"), dict):
        recipe = dict(training["recipe_config"])
        if isinstance(recipe.get("config"), dict):
            recipe["config"] = {
                k: portable_path(v, base) if k in PATH_FIELDS and isinstance(v, str) else v
                for k, v in recipe["config"].items()
            }
        if isinstance(recipe.get("checkpoint"), str):
            recipe["checkpoint"] = portable_path(recipe["checkpoint"], base)
        out["training"] = {**training, "recipe_config": recipe}
    if isinstance(out.get("metrics"), list):
        out["metrics"] = [
            {**m, "command": portable_command(m["command"], base)}
            if isinstance(m, dict) and isinstance(m.get("command"), str)
            else m
            for m in out["metrics"]
        ]
    gate = out.get("int8_gate")
    if isinstance(gate, dict) and isinstance(gate.get("command"), str):
        out["int8_gate"] = {**gate, "command": portable_command(gate["command"], base)}
    return out
