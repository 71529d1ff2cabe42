"""Atomic file writes, shared by training, export, the service's batch jobs and the zoo.

A file written with :func:`atomic_write` is either absent or complete, even after SIGKILL or a power
cut: the bytes go to a hidden ``.<name>.part`` file in the same folder (a rename across file systems
is not atomic), which is fsynced, renamed over the target, and the folder is fsynced so the rename
itself is durable. Without the first fsync a crash can leave a renamed but empty file (ext4, XFS).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

PART_SUFFIX = ".part"

Writer = Callable[[BinaryIO], Any]


def part_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path`` (hidden, in the same folder)."""
    return path.with_name(f".{path.name}{PART_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where the file system cannot open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, data: bytes | str | Writer) -> Path:
    """Write ``path`` whole or not at all; ``data`` is bytes, text (UTF-8) or ``write(file)``.

    A callable receives the open binary file (e.g. ``lambda f: torch.save(obj, f)``), so large
    objects are streamed to disk rather than built in memory first. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """:func:`atomic_write` of ``obj`` as indented JSON with a final newline."""
    return atomic_write(path, json.dumps(obj, indent=2, **dumps) + "\n")


def atomic_link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a complete copy of ``src`` atomically: a hard link where possible (no second
    write of a large file), else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = part_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    return dst
