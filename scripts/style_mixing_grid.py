"""A style-mixing grid of an exported style-based sample model, made with onnxruntime as served.

    python scripts/style_mixing_grid.py models/quickdraw_style --label cat \
        --rows 1 2 3 4 --cols 11 12 13 14 15 --layer 1 [--truncation 0.7] --out docs/design/style_mixing.png

The first row shows the samples of the ``--cols`` seeds, the first column those of the ``--rows``
seeds; the cell of row seed ``r`` and column seed ``c`` is ``r``'s sample taking ``c``'s styles from
style layer ``--layer`` on (``POST /sample`` with ``seed r``, ``n 1`` and ``mix {"seed": c,
"layer": L}`` gives the same image). Several ``--layer`` values stack one block per layer. Export a
training run first (``transfigure export RUN --name NAME --out DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.grid import tile
from service import sampling
from service.imaging import from_tensor
from service.zoo import Zoo


def mixing_rows(
    model, label: int, rows: list[int], cols: list[int], layer: int, psi: float
) -> list[list[np.ndarray]]:
    card = model.card

    def draw(seed: int, mix: sampling.Mix | None) -> np.ndarray:
        controls = sampling.Controls(truncation=psi, mix=mix)
        sampling.check_controls(card, controls, max_samples=1)
        r = sampling.plan_rows(card, 0, card.latent_dim, label, 1, seed, controls)
        return from_tensor(model.run(sampling.feeds(card, r, card.latent_dim)), card.output)[0]

    header = [np.zeros_like(draw(cols[0], None))] + [draw(c, None) for c in cols]
    grid = [header]
    for r in rows:
        grid.append([draw(r, None)] + [draw(r, sampling.Mix(c, layer)) for c in cols])
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a zoo model folder of a style-based sample model")
    p.add_argument("--label", default="0", help="class name or index")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4], help="seeds whose coarse styles stay")
    p.add_argument("--cols", type=int, nargs="+", default=[11, 12, 13, 14, 15], help="seeds mixed in")
    p.add_argument(
        "--layer", type=int, nargs="+", default=[1], help="style layer(s) the column seed takes over"
    )
    p.add_argument("--truncation", type=float, default=1.0, help="psi of every sample (default: 1)")
    p.add_argument("--scale", type=int, default=3, help="pixel repetition of the PNG (default: 3)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    model = Zoo.load(args.model.parent, names=[args.model.name], threads=1).get(args.model.name, "sample")
    if model.card.style is None:
        print(f"{args.model}: not a style-based model (its card has no 'style' record)", file=sys.stderr)
        return 2
    try:
        label = model.card.class_index(args.label)
        blocks = [
            mixing_rows(model, label, args.rows, args.cols, layer, args.truncation) for layer in args.layer
        ]
    except (ValueError, sampling.ControlError) as e:
        print(f"style_mixing_grid: {e}", file=sys.stderr)
        return 2
    grid = tile([row for block in blocks for row in block], pad=2, pad_value=255)
    image = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    image = image.resize((image.width * args.scale, image.height * args.scale), Image.Resampling.NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({len(args.rows)} x {len(args.cols)} mixes per layer, layers {args.layer})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
