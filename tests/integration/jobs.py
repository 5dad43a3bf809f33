"""The processes of one test's async copy job: those in the sessions of the processes naming its destination (rsync
does), so a check never matches another test's copy or a tool that happens to name datadir_copy."""

from __future__ import annotations

import os


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def copy_job(dest) -> dict:
    """pid -> command line of every process in the sessions of the processes naming ``dest`` (rsync does): the async
    job of this test's copy, and nothing of another test's."""
    pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    sessions = set()
    for pid in pids:
        if str(dest) in cmdline(pid):
            try:
                sessions.add(os.getsid(pid))
            except OSError:
                pass
    sessions.discard(os.getsid(0))
    job = {}
    for pid in pids:
        try:
            if os.getsid(pid) in sessions and alive(pid):
                job[pid] = cmdline(pid)
        except OSError:
            pass
    return job


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
