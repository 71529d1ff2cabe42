"""The model zoo: one folder per shipped model (``model.onnx`` + ``card.json``) and the card contract."""

from __future__ import annotations

import os
from pathlib import Path

from models.card import CARD_FILE, CardError, ModelCard, sha256_file

ZOO_DIR = Path(__file__).resolve().parent


def zoo_dir() -> Path:
    """The zoo folder: ``$TRANSFIGURE_MODELS_DIR`` if set, else the shipped ``models/``."""
    env = os.environ.get("TRANSFIGURE_MODELS_DIR")
    return Path(env).resolve() if env else ZOO_DIR


def card_paths(root: str | Path | None = None) -> list[Path]:
    """Every ``<root>/<name>/card.json``, sorted by model name."""
    root = Path(root) if root is not None else zoo_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"*/{CARD_FILE}") if p.is_file())


__all__ = ["CARD_FILE", "CardError", "ModelCard", "ZOO_DIR", "card_paths", "sha256_file", "zoo_dir"]
