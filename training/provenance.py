"""Where an exported model comes from: the card's TrainingInfo (dataset and its terms, the run's
config and history) and the source commit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

from models.paths import PATH_FIELDS, portable_path
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
