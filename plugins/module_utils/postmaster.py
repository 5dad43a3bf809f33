# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a server running in this data directory? The one rule, for every module that must not touch a live cluster:
postmaster.pid names a live process called postgres (or postmaster) working in that directory. A pid file left by a
crash, or copied along with the files, often names a PID that is dead or now belongs to another process, so a live
PID alone (``kill(pid, 0)``) is not enough."""

from __future__ import annotations

import os
import re
from typing import Optional

from .errors import PgBackupError


def postmaster_status(data_dir: str) -> dict:
    """What postmaster.pid says, and whether its PID is a live postgres process serving ``data_dir``.

    A postmaster.pid left by a crash, or copied along with the files, names a PID that is dead or is
    some other process (even another cluster's postmaster); only a live process named postgres (or
    postmaster) whose working directory is ``data_dir`` counts as running. Where /proc cannot tell,
    the directory recorded in the file must be ``data_dir``.
    """
    status: dict = {"pid_file": False, "pid": None, "running": False, "recorded_data_directory": None, "port": None, "socket_directory": None,
                    "listen_addresses": None, "status": None}  # fmt: skip
    path = os.path.join(data_dir, "postmaster.pid")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return status
    except OSError as exc:
        raise PgBackupError(f"cannot read {path}: {exc.strerror}") from None
    status["pid_file"] = True
    lines = text.split("\n")

    def field(index: int) -> Optional[str]:
        return lines[index].strip() or None if len(lines) > index else None

    pid_text = field(0) or ""
    pid = abs(int(pid_text)) if re.match(r"\A-?[0-9]+\Z", pid_text) else None  # negative: a single-user backend
    port = field(3)
    status.update(
        pid=pid,
        recorded_data_directory=field(1),
        port=int(port) if port and port.isdigit() else None,
        socket_directory=field(4),
        listen_addresses=field(5),
        status=field(7),
    )
    status["running"] = pid is not None and pid > 0 and _is_postmaster_of(pid, data_dir, field(1))
    return status


def _is_postmaster_of(pid: int, data_dir: str, recorded_dir: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    except OSError:
        return False
    want = os.path.realpath(data_dir)
    proc = f"/proc/{pid}"
    if os.path.isdir("/proc/self"):
        try:
            with open(f"{proc}/comm", encoding="utf-8", errors="replace") as handle:
                comm = handle.read().strip()
        except OSError:
            return False  # exited meanwhile
        if comm not in ("postgres", "postmaster"):
            return False
        try:
            return os.path.realpath(os.readlink(f"{proc}/cwd")) == want
        except FileNotFoundError:
            return False
        except OSError:
            pass  # not ours to inspect: fall back on the directory the file records
    return recorded_dir is not None and os.path.realpath(recorded_dir) == want
