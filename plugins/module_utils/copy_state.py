# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names datadir_copy leaves in a copy, and the check every other module makes before using one.

- ``INCOMPLETE_MARKER`` (``.pgbackup-incomplete`` in the copy's root) exists from the moment a copy
  starts writing until everything is copied and fsynced. A killed or failed copy keeps it. Every module
  of the collection except datadir_copy must call ``check_not_incomplete(data_dir)`` first.
- ``PENDING_CONTROL`` (``global/pg_control.pgbackup-pending``): the copied pg_control, written last and
  under this name, so that PostgreSQL refuses to start the copy (no ``global/pg_control``) until the
  label-placement step renames it into place next to its backup_label.
- ``CHECKSUMS_FILE`` (``.pgbackup-checksums.json`` in the copy's root): size, mtime and SHA-256 of every
  copied file, read (and removed) by backup_manifest.

What says a destination is a copy of a given cluster (``copy_identity``), which delta requires before it removes
anything: the system identifier (the first 8 bytes of pg_control, in the host's byte order) of its
``global/pg_control`` (a finished, placed copy or a data directory), of ``PENDING_CONTROL`` (a copy whose label
was not placed yet), or the ``system identifier N`` line datadir_copy writes into ``INCOMPLETE_MARKER`` (a copy
interrupted before pg_control).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Optional

from .durable import fsync_dir, write_atomically
from .errors import PgBackupError
from .postmaster import postmaster_status

INCOMPLETE_MARKER = ".pgbackup-incomplete"
PENDING_CONTROL = "global/pg_control.pgbackup-pending"
CHECKSUMS_FILE = ".pgbackup-checksums.json"
OWN_FILES = (INCOMPLETE_MARKER, CHECKSUMS_FILE)
_MARKER_SYSID = re.compile(r"^system identifier (\d+)$", re.M)


def system_identifier_of(control_head: bytes) -> Optional[int]:
    """The system identifier in the first 8 bytes of a pg_control file (host byte order), or None when shorter."""
    if len(control_head) < 8:
        return None
    return int.from_bytes(control_head[:8], sys.byteorder)


def marker_text(source: str, system_identifier: Optional[int], started: float) -> str:
    """What datadir_copy writes into the incomplete marker: where from, when, and the source's system identifier."""
    text = f"datadir_copy from {source} started {started:.0f}\n"
    if system_identifier is not None:
        text += f"system identifier {system_identifier}\n"
    return text


def copy_identity(data_dir: str) -> tuple:
    """``(system identifier, relative path that says so)`` of an earlier copy (or data directory) at ``data_dir``,
    or ``(None, None)`` when nothing there names a cluster (see the module docstring)."""
    for rel in ("global/pg_control", PENDING_CONTROL):
        path = os.path.join(data_dir, rel)
        try:
            with open(path, "rb") as f:
                sysid = system_identifier_of(f.read(8))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        if sysid is not None:
            return sysid, rel
    try:
        with open(os.path.join(data_dir, INCOMPLETE_MARKER), encoding="utf-8", errors="replace") as f:
            m = _MARKER_SYSID.search(f.read(4096))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        m = None
    if m:
        return int(m.group(1)), INCOMPLETE_MARKER
    return None, None


def is_incomplete(data_dir: str) -> bool:
    """Whether ``data_dir`` carries the marker of an unfinished datadir_copy."""
    return os.path.lexists(os.path.join(data_dir, INCOMPLETE_MARKER))


def check_not_incomplete(data_dir: str) -> None:
    """Refuse a copy whose datadir_copy did not finish (killed, failed, disk full)."""
    if is_incomplete(data_dir):
        raise PgBackupError(
            f"{data_dir} is an unfinished copy (it has {INCOMPLETE_MARKER}): its datadir_copy failed or was killed; "
            "run datadir_copy again (delta: true reuses what was copied) before using it",
            path=data_dir,
        )


def check_stopped_copy(data_dir: str, *, writing: str, because: str) -> None:
    """``data_dir`` is a finished copy (PG_VERSION, no incomplete marker) that no server runs on: the only kind of data
    directory label_place and recovery_config write into. ``writing`` and ``because`` say what would be written and
    what it would do to a live server."""
    if not os.path.isfile(os.path.join(data_dir, "PG_VERSION")):
        raise PgBackupError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION): give the copy datadir_copy made")
    postmaster = postmaster_status(data_dir)
    if postmaster["running"]:
        raise PgBackupError(
            f"a postmaster (PID {postmaster['pid']}) runs on {data_dir}: {writing} only in a stopped copy, never in a live cluster ({because})",
            pid=postmaster["pid"],
        )
    check_not_incomplete(data_dir)


def write_marker(data_dir: str, text: str) -> None:
    """Create the incomplete marker and make it durable (file and directory fsynced)."""
    path = os.path.join(data_dir, INCOMPLETE_MARKER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(data_dir)


def remove_marker(data_dir: str) -> None:
    """Remove the incomplete marker durably (the last step of a successful copy)."""
    path = os.path.join(data_dir, INCOMPLETE_MARKER)
    if os.path.lexists(path):
        os.unlink(path)
    fsync_dir(data_dir)


def write_checksums(data_dir: str, algorithm: str, files: dict) -> None:
    """``files``: relative path -> [size, mtime_ns, hex digest]; written atomically and fsynced."""
    path = os.path.join(data_dir, CHECKSUMS_FILE)
    write_atomically(path, json.dumps({"algorithm": algorithm, "files": files}).encode("ascii"), temporary=path + ".tmp")


def read_checksums(data_dir: str) -> tuple:
    """``(algorithm, files)`` recorded by datadir_copy, or ``(None, {})`` when there are none."""
    path = os.path.join(data_dir, CHECKSUMS_FILE)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("ascii"))
    except FileNotFoundError:
        return None, {}
    except ValueError as exc:
        raise PgBackupError(f"{path} is not a checksum record of datadir_copy: {exc}", path=path) from exc
    return data.get("algorithm"), data.get("files", {})
