"""Where an exported model comes from: the card's TrainingInfo (dataset and its terms, the run's
config and history) and the source commit."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from training.data.catalog import UNKNOWN_LICENSE, provenance

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


PATH_FIELDS = ("data", "out", "init", "val_data", "judge")  # config fields that hold paths


def config_dict(config) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        d = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    else:
        d = dict(config)
    return {k: portable_path(v) if k in PATH_FIELDS and isinstance(v, str) else v for k, v in d.items()}


def training_info(loaded, spec, net_name: str) -> dict[str, Any]:
    """The card's TrainingInfo: provenance from training/data/catalog.py, the run's config and history."""
    data_path = getattr(loaded.config, "data", "") or spec.dataset.get("path", "")
    prov = provenance(data_path) if data_path else None
    ds = spec.dataset or {}
    if prov is not None and prov.license != UNKNOWN_LICENSE:
        name, source, license_ = prov.name, prov.source, prov.license  # a known dataset: its terms
    else:
        name = ds.get("name") or (prov.name if prov else "unknown")
        source = ds.get("source") or (prov.source if prov else "unknown")
        license_ = ds.get("license") or UNKNOWN_LICENSE
    recipe_config = {
        "recipe": loaded.recipe,
        "net": net_name,
        "config": config_dict(loaded.config),
        "checkpoint": portable_path(loaded.checkpoint),
        "ema_weights": loaded.used_ema,
    }
    if ds.get("split"):
        recipe_config["split"] = ds["split"]
    return {
        "dataset": name,
        "source": source,
        "license": license_,
        "split_sizes": {str(k): int(v) for k, v in (ds.get("split_sizes") or {}).items()},
        "recipe_config": recipe_config,
        "steps": int(loaded.step),
        "wall_time_s": float(loaded.wall_time_s),
        "hardware": loaded.hardware,
        "commit": git_commit(),
        "pretrained_networks": [dict(p) for p in spec.pretrained],
    }
