from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import durable


def test_write_atomically_replaces_whole_with_the_mode_even_over_a_stale_temporary(tmp_path):
    target = tmp_path / "backup_label"
    target.write_bytes(b"old")
    stale = tmp_path / ".backup_label.pgbackup-tmp"
    stale.write_bytes(b"left by a crashed run, longer than the new data")
    stale.chmod(0o666)
    durable.write_atomically(str(target), b"new", mode=0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "O_CREAT keeps a stale file's mode: fchmod sets it"
    assert not stale.exists()


def test_write_atomically_writes_everything_when_the_kernel_writes_less(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    durable.write_atomically(str(tmp_path / "f"), b"0123456789", temporary=str(tmp_path / "f.tmp"))
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    assert not (tmp_path / "f.tmp").exists()


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "started.json"
    target.write_bytes(b"old")

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        durable.write_atomically(str(target), b"new")
    assert target.read_bytes() == b"old"


def test_fsync_file_never_follows_a_symlink(tmp_path):
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    durable.fsync_file(str(tmp_path / "real"))
    durable.fsync_dir(str(tmp_path))
    with pytest.raises(OSError):
        durable.fsync_file(str(tmp_path / "link"))


def test_read_if_exists_tells_absent_from_unreadable(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    assert durable.read_if_exists(str(tmp_path / "f")) == b"x"
    assert durable.read_if_exists(str(tmp_path / "missing")) is None
    with pytest.raises(IsADirectoryError):
        durable.read_if_exists(str(tmp_path))
