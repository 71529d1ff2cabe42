"""models.files: every atomic write in the project leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models import files


def _broken_fsync(fd: int) -> None:
    raise OSError("disk full")


@pytest.mark.parametrize("data", [b"new contents", "new contents", lambda f: f.write(b"new contents")])
def test_write_bytes_text_or_writer(tmp_path: Path, data) -> None:
    target = tmp_path / "a" / "b" / "x.bin"
    assert files.atomic_write(target, data) == target
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]  # no .part left behind


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.png"
    files.atomic_write(target, b"old")
    monkeypatch.setattr(os, "fsync", _broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"  # a failure before the rename never touches the output
    assert not files.part_path(target).exists()


def test_a_writer_that_raises_midway_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    files.atomic_write(target, b"complete checkpoint")

    def half_then_fail(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt  # e.g. Ctrl-C during torch.save

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"complete checkpoint"
    assert not files.part_path(target).exists()


def test_json_is_indented_with_a_final_newline(tmp_path: Path) -> None:
    text = files.atomic_write_json(tmp_path / "c.json", {"b": [1, 2]}).read_text()
    assert text == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'


def test_link_or_copy_replaces_the_target_whole(tmp_path: Path) -> None:
    src, dst = tmp_path / "step_10.pt", tmp_path / "last.pt"
    src.write_bytes(b"weights at step 10")
    dst.write_bytes(b"weights at step 5")
    files.atomic_link_or_copy(src, dst)
    assert dst.read_bytes() == b"weights at step 10"
    assert not files.part_path(dst).exists()
