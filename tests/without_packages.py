"""Run a snippet in a fresh interpreter where importing some packages fails, as it would with only
the `serve` extra installed (no torch, no train extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named '{{name}}'", name=name)
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run_without(blocked: set[str], code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` (dedented) run by ``python -c`` in the repository root with ``blocked`` unimportable."""
    script = _BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
