# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy's start gate: an async datadir_copy launched *before* the backup starts waits here, writing nothing, until
the task that may let it begin (replay_wait, once the standby replayed past the backup's start) opens the gate.

Launching an async job costs Ansible about a second (no pipelining for async: a temporary directory, the module file,
async_wrapper's fork and its report); behind the gate that second is spent before the backup starts instead of
inside backup mode. The copy still lists and reads the source only after the gate opened, so nothing it copies can be
older than the backup's start.

The gate is a small file beside the destination (like the progress file), written only by whoever opens or cancels
it, never by the copy. ``go <token>`` opens it and ``cancel <token>`` ends a waiting copy at once, the token being a
random value the role makes for this run: a gate file left by an earlier run, or written by anybody who does not know
the token, neither lets a copy begin nor ends one. While it waits, the copy says so in ``<gate>.waiting`` (its pid and
token), which is how backup_abort finds and cancels a copy whose play was interrupted. A copy whose gate neither opens
nor is cancelled gives up after its timeout. Either way nothing was written to the destination.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Optional

from .errors import PgBackupError

WAITING_SUFFIX = ".waiting"
POLL = 0.05  # the backup is open while the copy waits to see the gate open: look often
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def check_token(token: str) -> None:
    if not _TOKEN.match(token or ""):
        raise PgBackupError("the gate's token must be 16 to 128 letters, digits, '_' or '-' (a random value made for this run)")


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def open_gate(path: str, token: str) -> None:
    """Let the copy waiting at ``path`` begin."""
    check_token(token)
    _write(path, f"go {token}\n")


def cancel_gate(path: str, token: str) -> None:
    """End the copy waiting at ``path`` with ``token`` without it writing anything (it has not begun)."""
    check_token(token)
    _write(path, f"cancel {token}\n")


def waiting_copy(path: str) -> Optional[tuple]:
    """(pid, token) of a copy waiting at ``path`` whose process still runs, else None."""
    seen = _read(path + WAITING_SUFFIX) or ""
    parts = seen.split()
    if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN.match(parts[1]):
        return None
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's: not ours to cancel, but say it is there
    return int(parts[0]), parts[1]


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(200).strip()
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def wait_for_gate(path: str, token: str, timeout: float, dest: str, *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> float:  # fmt: skip
    """Return (the seconds waited) once ``path`` says ``go <token>``; raise when it says ``cancel <token>`` or after
    ``timeout`` seconds. The gate file and the waiting note are removed either way. Nothing else is touched."""
    check_token(token)
    began = clock()
    _write(path + WAITING_SUFFIX, f"{os.getpid()} {token}\n")
    try:
        while True:
            seen = _read(path)
            if seen == f"go {token}":
                _remove(path)
                return clock() - began
            if seen == f"cancel {token}":
                _remove(path)
                raise PgBackupError(
                    f"the copy into {dest} was cancelled before it began (the backup it waited for failed or was aborted): nothing was written there",
                    gate=path,
                    cancelled=True,
                )
            if clock() - began >= timeout:
                raise PgBackupError(
                    f"the copy into {dest} waited {timeout:g} s for its go-ahead ({path}) and gave up: the run that launched it ended or "
                    "failed before the backup's start was replayed; nothing was written there",
                    gate=path,
                )
            sleep(POLL)
    finally:
        _remove(path + WAITING_SUFFIX)
