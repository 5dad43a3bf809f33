# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keeper's private state directory: one directory per backup id, JSON files written atomically.

Layout of ``<state_dir>/<backup_id>/``:

- ``keeper.pid``: the keeper's PID, written first (a second start of the same id sees it).
- ``started.json``: the start result, written before backup_start is answered.
- ``stopped.json``: the stop result (label and map as exact bytes in base64), written before backup_stop is answered,
  so a retried backup_stop whose first answer was lost returns it again.
- ``aborted.json``: why the backup ended without a label (request, max_duration, lost session, ...).
- ``keeper.sock``: the Unix socket backup_stop talks to (0600), removed when the keeper exits.
- ``keeper.log``: what the keeper did, one line per event, never a password.
- ``snapshot_set.json``: written by backup_start before the start when given ``snapshot_set`` (standby_backup's copy
  method snapshot): the set's name, the host it is on, its paths and provider, so that the abort of a run whose
  controller died releases it (backup_abort).

Every directory is 0700 and every file 0600, owned by the user the module runs as.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import stat
from typing import Optional

from ..durable import write_atomically
from ..errors import PgBackupError

BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
PID_FILE = "keeper.pid"
STARTED = "started.json"
STOPPED = "stopped.json"
ABORTED = "aborted.json"
STOP_WAIT = "stop_wait.json"  # what a long stop waits for (the keeper's watch, every few seconds)
SOCKET = "keeper.sock"
LOG = "keeper.log"
SNAPSHOT_SET = "snapshot_set.json"


def default_state_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "pgbackup.lowlevel", "keepers")


def check_backup_id(backup_id: object) -> str:
    if not isinstance(backup_id, str) or not BACKUP_ID.match(backup_id):
        raise PgBackupError(
            f"backup_id {backup_id!r} is not valid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(it names a directory and the keeper's application_name)"
        )
    return backup_id


def new_backup_id(now: Optional[datetime.datetime] = None) -> str:
    """A fresh id that sorts by time: ``20261123T004501Z-3f9a1c``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def ensure_state_dir(path: str, *, create: bool = True) -> str:
    """The state directory, made 0700 when missing; refused when another user owns it or others may enter it."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        if not create:
            raise PgBackupError(f"state_dir {path} does not exist: no backup was started with this state_dir on this host (as this user)")
        try:
            _makedirs_private(path)
        except OSError as exc:
            raise PgBackupError(f"cannot create state_dir {path}: {exc.strerror}; choose a state_dir this user may create") from None
        os.chmod(path, 0o700)
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise PgBackupError(
            f"state_dir {path} belongs to uid {info.st_uid}, but the module runs as uid {os.geteuid()}: "
            "the keeper's socket and results must be private to the user that runs the backup; use that user's own state_dir"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise PgBackupError(
            f"state_dir {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be private (0700) because it holds the keeper's socket: "
            f"chmod 0700 {path} or choose another state_dir"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise PgBackupError(f"state_dir {path} is not writable by uid {os.geteuid()}: choose a state_dir this user may write")
    return path


def _makedirs_private(path: str) -> None:
    """Like os.makedirs, but every directory it creates is 0700 (os.makedirs gives the mode to the last one only,
    so ~/.cache/pgbackup.lowlevel came out 0755); existing parents are left as they are."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)  # the umask may have taken bits away; never added


def session_dir(state_dir: str, backup_id: str) -> str:
    return os.path.join(state_dir, check_backup_id(backup_id))


def write_json(directory: str, name: str, data: dict) -> None:
    """Write ``name`` atomically (temporary file, fsync, rename, fsync of the directory), mode 0600."""
    target = os.path.join(directory, name)
    body = json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    write_atomically(target, body, temporary=f"{target}.{os.getpid()}.tmp")  # per pid: the keeper and a module may both write


def snapshot_set_problem(record) -> Optional[str]:
    """None if ``record`` is a snapshot set record (SNAPSHOT_SET): non-empty name, host and provider, and a non-empty
    list of absolute paths; else what is wrong. backup_start writes one only if it is, backup_abort releases only those."""
    if not isinstance(record, dict):
        return f"a mapping was expected, found {type(record).__name__}"
    missing = [key for key in ("name", "host", "provider") if not (isinstance(record.get(key), str) and record[key])]
    if missing:
        return f"{', '.join(missing)} must be non-empty strings"
    paths = record.get("paths")
    if not (isinstance(paths, list) and paths and all(isinstance(path, str) and path.startswith("/") for path in paths)):
        return "paths must be a non-empty list of absolute paths"
    return None


def read_json(directory: str, name: str) -> Optional[dict]:
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PgBackupError(f"cannot read {os.path.join(directory, name)}: {exc}; the keeper's state is damaged") from None


def read_pid(directory: str) -> Optional[int]:
    try:
        with open(os.path.join(directory, PID_FILE), encoding="ascii") as handle:
            return int(handle.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_pid(directory: str, pid: int) -> None:
    fd = os.open(os.path.join(directory, PID_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{pid}\n".encode("ascii"))
    finally:
        os.close(fd)


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own unreaped child) is not a keeper any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def log_line(directory: str, message: str) -> None:
    """Append one line to keeper.log; never fails the keeper."""
    try:
        fd = os.open(os.path.join(directory, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            os.write(fd, f"{now} [{os.getpid()}] {message}\n".encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:
        pass
