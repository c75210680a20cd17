"""Atomic result writes: all or nothing, readable by all."""

import errno
import os
import stat

import pytest

from unigame.files import write_atomic


def test_write_atomic_writes_text_and_bytes_readable_by_all(tmp_path):
    path = tmp_path / "new" / "dir" / "table.md"
    write_atomic(path, "ε = 0.01\n")
    assert path.read_text(encoding="utf-8") == "ε = 0.01\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
