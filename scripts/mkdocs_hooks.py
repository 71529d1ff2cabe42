"""MkDocs hooks (local, offline): the site shows each model's sample grid from its own folder.

``models/<name>/samples.png`` is published as ``models/samples/<name>.png`` (the model pages link it
there), so the image is not copied into ``docs/`` and cannot drift from the model it belongs to.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def on_files(files: Files, config, **kwargs) -> Files:
    for grid in sorted((ROOT / "models").glob("*/samples.png")):
        files.append(File.generated(config, f"models/samples/{grid.parent.name}.png", abs_src_path=str(grid)))
    return files
