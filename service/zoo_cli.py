"""List the models in the zoo with their task and headline metric as shipped.

A model that ships INT8 shows its INT8 file's measurement (the card's ``int8_gate``); where the card
has none, the fp32 figure is marked as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models import CardError, ModelCard, card_paths, zoo_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="zoo folder (default: $TRANSFIGURE_MODELS_DIR or models/)",
    )
    p.add_argument("--json", action="store_true", help="print the cards as JSON instead of a table")
    p.add_argument(
        "--verify", action="store_true", help="also check each ONNX file against its card's sha256"
    )


def run(args: argparse.Namespace) -> int:
    root = args.models_dir or zoo_dir()
    rows, cards, problems = [], [], []
    for path in card_paths(root):
        try:
            card = ModelCard.load(path)
            if args.verify:
                card.verify_file(path.parent)
        except CardError as e:
            problems.append(str(e))
            continue
        cards.append(card)
        h, measured_in = card.shipped_headline()
        extra = f"x{card.scale}" if card.scale else (",".join(card.classes) if card.classes else "")
        metric = f"{h.name}={h.value:.4g}" if h else "-"
        if h and measured_in != card.precision:
            metric += f" (measured in {measured_in})"
        rows.append((card.name, card.task, card.method, card.precision, extra, metric))
    if args.json:
        print(json.dumps([c.model_dump(mode="json") for c in cards], indent=2))
    else:
        print(f"zoo: {root}  ({len(cards)} model{'s' if len(cards) != 1 else ''})")
        if rows:
            header = ("name", "task", "method", "precision", "scale/classes", "headline metric (as shipped)")
            widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
            for r in [header, *rows]:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        else:
            print("no models found (train and export one: see docs/training.md)")
    for msg in problems:
        print(f"unusable card: {msg}")
    return 1 if problems else 0
