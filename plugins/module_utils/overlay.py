# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A writable view of a directory that never changes it: overlayfs, the directory read-only below, a scratch above.

The restore test starts a server on a copy; a ``cp -a`` of the whole copy first costs its size in time and disk. An
overlay costs only what the server writes (files it changes are copied up whole, new WAL, pg_control). Mounting needs
root and a kernel with overlayfs; callers fall back to a copy when ``mount_overlay`` returns an error text.
"""

from __future__ import annotations

import os
from typing import Optional

from . import processes


def mount_overlay(lower: str, upper: str, work: str, target: str, uid: int, gid: int) -> Optional[str]:
    """Mount lower (read-only) + upper on target; None when mounted, else why not (the caller copies instead)."""
    if os.geteuid() != 0:
        return "not root: an overlay mount needs root"
    for path in (upper, work, target):
        os.makedirs(path, mode=0o700, exist_ok=True)
    # the merged root takes the upper directory's owner and mode: the server wants its data directory 0700 and its own
    for path in (upper, target):
        os.chown(path, uid, gid)
        os.chmod(path, 0o700)
    # a comma or colon in a path would split the option string; such a copy is copied instead
    if any(c in p for p in (lower, upper, work) for c in ",:"):
        return "a path holds ',' or ':', which overlay options cannot carry"
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc = processes.run(["mount", "-t", "overlay", "overlay", "-o", options, target], text=True, timeout=60)
    if proc.returncode != 0:
        return f"mount -t overlay failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-300:]}"
    return None


def unmount(target: str) -> None:
    """Unmount, lazily when still busy (a server that would not stop): the scratch is removed only once unmounted."""
    if processes.run(["umount", target], timeout=60).returncode != 0:
        processes.run(["umount", "-l", target], timeout=60)


def tree_bytes(path: str) -> int:
    """Bytes in a tree (the upper directory: what the scratch server wrote), not following links."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
