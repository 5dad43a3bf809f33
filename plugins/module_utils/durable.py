# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable files, written once for every module: fsync of a file or a directory, and a write that after a crash is
either the old file or the whole new one (temporary file beside it, fsync, rename, fsync of the directory); and the
read of a file that may not exist yet.

Used for the keeper's state files, the copy's checksums and marker, backup_label, tablespace_map and pg_control as
label_place puts them, recovery settings, the manifest, and WAL segments as wal_collect lands them."""

from __future__ import annotations

import os
from typing import Optional


def fsync_file(path: str) -> None:
    """fsync of a file we wrote (never through a symlink a source could have planted)."""
    _fsync(path, os.O_RDONLY | os.O_NOFOLLOW)


def fsync_dir(path: str) -> None:
    """fsync of a directory: what makes a rename or an unlink in it durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, *, mode: int = 0o600, owner: Optional[tuple] = None, temporary: Optional[str] = None) -> None:
    """Write ``data`` to ``path`` durably with ``mode`` (and ``owner`` (uid, gid) when running as root).

    ``temporary`` (default ``.<name>.pgbackup-tmp`` beside it) is truncated first, so one left by a crashed run is
    simply overwritten; its mode is set with fchmod because O_CREAT keeps the mode of a file that already exists."""
    directory = os.path.dirname(path) or "."
    if temporary is None:
        temporary = os.path.join(directory, f".{os.path.basename(path)}.pgbackup-tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    fsync_dir(directory)


def read_if_exists(path: str) -> Optional[bytes]:
    """The file's bytes, or None when there is no such file (any other error is raised: it is not "absent")."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
