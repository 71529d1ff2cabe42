"""Shared test fixtures. Keep this small: the real images live in tests/fixtures (see SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """tests/fixtures: yosemite/ (unpaired), facades/ (paired AB), monet/, sr/, quickdraw/."""
    return FIXTURES


@pytest.fixture
def small_torch():
    """Run a test on one CPU thread (the CI machines are shared) and restore the setting after."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)
