"""Processes the test bed started: checked and stopped by PID, never by name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' when it is gone or a zombie)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cwd(pid: int) -> str:
    try:
        return os.readlink(Path("/proc") / str(pid) / "cwd")
    except OSError:
        return ""


def alive(pid: int, marker: str = "") -> bool:
    """Whether ``pid`` runs and (with a marker) is still ours: a recycled PID would not name our run dir or cluster.

    A postmaster runs in its data directory, so its cwd identifies it even when its command line has a relative path.
    """
    line = cmdline(pid)
    return bool(line) and (marker in line or cwd(pid) == marker)


def kill(pid: int, marker: str = "", sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Send ``sig`` to ``pid`` if it is still ours, wait up to ``timeout``, then SIGKILL it."""
    if not pid or not alive(pid, marker):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if _gone_within(pid, marker, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _gone_within(pid, marker, 5)


def _gone_within(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, or it lingers as a zombie
        except ChildProcessError:
            pass
        if not alive(pid, marker):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def pids_mentioning(*needles: str) -> list[tuple[int, str]]:
    """Every process whose command line contains one of ``needles`` (the leftover probe)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        line = cmdline(int(entry.name))
        if line and any(n in line for n in needles):
            found.append((int(entry.name), line))
    return found
