"""Every model shipped in models/ loads through the service's loader and answers at its native size."""

from __future__ import annotations

import numpy as np
import pytest

from models import ModelCard, card_paths
from service.zoo import load_model

SHIPPED = card_paths()


@pytest.mark.skipif(
    not SHIPPED, reason="models/ ships no model yet (see issue: train and ship the default zoo)"
)
@pytest.mark.parametrize("card_path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_model_loads_and_runs(card_path) -> None:
    card = ModelCard.load(card_path)
    card.verify_file(card_path.parent)  # sha256
    model = load_model(card_path, threads=1)
    feeds = model.warmup_feeds(batch=2)
    out = model.run(feeds)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    lo, hi = card.output.range
    assert out.min() >= lo - 1e-3 and out.max() <= hi + 1e-3, "output outside the card's range"
    assert out.shape[:2] == (2, card.output.channels)
    if card.task == "sample":
        assert out.shape[2:] == (card.output_size, card.output_size)
    else:
        side = feeds["image"].shape[-1]
        scale = card.scale or 1
        assert out.shape[2:] == (side * scale, side * scale)
