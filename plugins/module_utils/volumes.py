# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which volume holds a path: the mount (from ``/proc/self/mountinfo``) and, on btrfs, the subvolume.

A snapshot backup snapshots volumes, not directories, so the first question is which volume each of the backup's
paths (data directory, every tablespace, a separate ``pg_wal``) lives on, and whether a snapshot of that volume holds
*all* of the path. It does not when something below the path is another filesystem or another btrfs subvolume: a
btrfs snapshot shows a nested subvolume as an empty directory, and a snapshot of a device does not include what is
mounted on it. :func:`nested_volumes` finds those, so that a snapshot that would silently miss files is refused.

On btrfs the root of every subvolume has inode 256 (``BTRFS_FIRST_FREE_OBJECTID``) and its own ``st_dev``; that is
how :func:`btrfs_subvolume_root` finds the subvolume a path is in without calling ``btrfs``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .errors import PgBackupError

BTRFS_SUBVOLUME_ROOT_INODE = 256
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str  # the device (/dev/loop0, /dev/mapper/vg-lv, pool/dataset for ZFS)
    root: str  # the part of the filesystem mounted there (a btrfs subvol=, a bind mount's source directory)


@dataclass(frozen=True)
class Volume:
    """What one snapshot covers: ``root`` (a btrfs subvolume's root, or a mount point) on ``mount``."""

    root: str
    mount: Mount


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list:
    """Every mount of ``/proc/self/mountinfo`` text, in its order (a later mount on the same point hides an earlier)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(mount_point=_unescape(fields[4]), fstype=tail[0], source=_unescape(tail[1]), root=_unescape(fields[3])))
    return mounts


def read_mounts(path: str = MOUNTINFO) -> list:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def mount_of(path: str, mounts: list) -> Mount:
    """The mount ``path`` (already resolved) is on: the longest mount point that is ``path`` or a parent of it, the last
    one mounted where two share a point."""
    best: Optional[Mount] = None
    for mount in mounts:
        point = mount.mount_point
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    if best is None:
        raise PgBackupError(f"no mount in {MOUNTINFO} holds {path}; expected at least the root filesystem", path=path)
    return best


def btrfs_subvolume_root(path: str, mount: Mount) -> str:
    """The root of the btrfs subvolume ``path`` is in: the nearest directory upwards with inode 256, not above the mount."""
    current = path
    while True:
        if os.stat(current).st_ino == BTRFS_SUBVOLUME_ROOT_INODE or current == mount.mount_point:
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return current
        current = parent


def volume_of(path: str, mounts: list) -> Volume:
    """The volume holding the directory ``path`` (symlinks resolved: a tablespace or pg_wal link points elsewhere)."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise PgBackupError(f"{path} is not a directory; expected a data directory, tablespace or pg_wal directory", path=path)
    mount = mount_of(real, mounts)
    root = btrfs_subvolume_root(real, mount) if mount.fstype == "btrfs" else mount.mount_point
    return Volume(root=root, mount=mount)


def nested_volumes(path: str) -> list:
    """Directories below ``path`` that a snapshot of ``path``'s volume would not contain: another filesystem mounted
    there, or a btrfs subvolume (its own ``st_dev``). Symlinks (pg_tblspc entries, a pg_wal link) are not followed.
    Directories only are read: a data directory has a few thousand, even at 1 TB."""
    real = os.path.realpath(path)
    device = os.stat(real).st_dev
    found, stack = [], [real]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_dev != device:
                    found.append(entry.path)
                else:
                    stack.append(entry.path)
    return sorted(found)
