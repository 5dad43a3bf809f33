# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One round of the copy wait (copy_wait): the async job's state, the copy's progress and the keeper's status.

Runs on the host of the copy and of the keeper (backup_start runs where datadir_copy writes). The controller side
(plugins/action/copy_wait.py) loops over rounds in Python, so a long copy never nests includes (ansible-core gives up
after about 245 nested include_tasks). When the keeper's backup is lost the copy is useless: its async job is killed
at once (datadir_copy leaves .pgbackup-incomplete in the destination because it never reached its end).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Optional

from .session import keeper_files, keeper_protocol

PHASES = {"copy": "copying", "sync": "fsync", "done": "pg_control and done"}


def read_job(async_dir: str, jid: str) -> dict:
    """Whether the async job finished, and then its result: async_wrapper's job file says ``{"started": 1,
    "finished": 0}`` while it runs and is replaced by the module's result (no "started") at its end, as async_status
    reads it. A missing job file counts as finished without a result (the caller says so)."""
    path = os.path.join(os.path.expanduser(async_dir), jid)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"finished": True, "result": None, "job_file": path}
    except ValueError:
        return {"finished": False}  # written while we read it; the next round sees it whole
    if data.get("started"):
        return {"finished": False}
    return {"finished": True, "result": data if isinstance(data, dict) else {"failed": True, "msg": f"the job file {path} holds no result"}}


def read_progress(path: Optional[str]) -> dict:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def keeper_lost(state_dir: str, backup_id: str) -> Optional[str]:
    """Why the keeper's backup is gone, or None while it is in backup (or busy answering)."""
    directory = keeper_files.session_dir(state_dir, backup_id)
    aborted = keeper_files.read_json(directory, keeper_files.ABORTED)
    if aborted is not None:
        return aborted.get("reason") or "the keeper recorded that the backup was aborted"
    try:
        answer = keeper_protocol.request(directory, keeper_files.SOCKET, {"op": "status"}, timeout=5)
    except (socket.timeout, TimeoutError):
        return None  # busy, not lost: the stop says more
    except keeper_protocol.KeeperUnreachable:
        if keeper_files.read_json(directory, keeper_files.STOPPED) is not None:
            return None
        aborted = keeper_files.read_json(directory, keeper_files.ABORTED)
        if aborted is not None:  # written between the first look and the request: the keeper's own cause is the truth
            return aborted.get("reason") or "the keeper recorded that the backup was aborted"
        pid = keeper_files.read_pid(directory)
        return f"the keeper of backup {backup_id} (pid {pid}) is gone, so its session closed and PostgreSQL aborted the backup"
    if answer.get("state") == "aborted":
        again = keeper_files.read_json(directory, keeper_files.ABORTED) or {}
        return again.get("reason") or "the keeper says the backup was aborted"
    return None


def _job_processes(jid: str) -> list:
    """PIDs of async_wrapper's processes for ``jid`` (``<base>.<pid>``) and of everything in their session."""
    base = jid.rsplit(".", 1)[0]
    sessions = set()
    procs = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            sid = os.getsid(int(name))
        except OSError:
            continue
        procs.append((int(name), sid))
        if base.encode() in argv and any(b"async_wrapper" in a for a in argv):
            sessions.add((int(name), sid))
    # async_wrapper daemonizes (fork, setsid, fork): its job's session leader has exited, or is a wrapper process
    # itself. A session whose leader is something else alive (a shell, sshd: the wrapper before it daemonized) is
    # never ours to kill.
    alive = {pid for pid, _sid in procs}
    wrappers = {pid for pid, _sid in sessions}
    ours = {sid for _pid, sid in sessions if sid not in alive or sid in wrappers}
    ours.discard(os.getsid(0))
    me = os.getpid()
    return [pid for pid, sid in procs if sid in ours and pid != me]


def kill_job(jid: str, grace: float = 5.0) -> list:
    """Stop the async copy: SIGTERM to every process of its session (wrapper, datadir_copy, rsync, ssh), SIGKILL
    after ``grace`` seconds to what is left. Returns the PIDs signalled."""
    pids = _job_processes(jid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and not _zombie(p) for p in pids):
            time.sleep(0.1)
    return pids


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def one_round(
    *,
    jid: str,
    async_dir: str,
    progress_file: Optional[str],
    state_dir: Optional[str],
    backup_id: Optional[str],
    wait: float,
    remove_progress_file: bool = False,
) -> dict:
    """Wait up to ``wait`` seconds for the job to finish (looked at ten times a second: the backup stays open until the
    wait returns, so it returns the moment the copy ends) or the keeper's backup to be lost (asked twice a second).
    A finished job's result comes back as ``copy_result`` (what async_status would read), so no further task is needed."""
    deadline = time.monotonic() + wait
    next_keeper_look = 0.0
    while True:
        job = read_job(async_dir, jid)
        lost = None
        if state_dir and backup_id and not job.get("finished") and time.monotonic() >= next_keeper_look:
            lost = keeper_lost(state_dir, backup_id)
            next_keeper_look = time.monotonic() + 0.5
        if lost:
            killed = kill_job(jid)
            return {"finished": False, "lost": lost, "killed": killed, "progress": read_progress(progress_file)}  # kept: where it stopped
        if job.get("finished"):
            answer = {"finished": True, "lost": None, "progress": _read_and_remove(progress_file, remove_progress_file), "copy_result": job["result"]}
            if job["result"] is None:
                answer["missing_job_file"] = job["job_file"]
            return answer
        if time.monotonic() >= deadline:
            return {"finished": False, "lost": None, "progress": read_progress(progress_file)}
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _read_and_remove(progress_file: Optional[str], remove: bool) -> dict:
    """The copy's last progress record; the file goes once the copy finished (nobody reads it after that)."""
    progress = read_progress(progress_file)
    if remove and progress_file:
        try:
            os.unlink(progress_file)
        except FileNotFoundError:
            pass
    return progress


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(progress: dict, elapsed: float) -> str:
    """A line for the play's output: phase, percentage, MiB, MiB/s, elapsed and ETA; done never exceeds the total."""
    total = max(0, int(progress.get("bytes_total") or 0))
    done = min(max(0, int(progress.get("bytes_done") or 0)), total)
    if not progress:
        return f"copy: listing the source, elapsed {_duration(elapsed)}"
    phase = PHASES.get(progress.get("phase"), str(progress.get("phase")))
    rate = max(0, int(progress.get("rate_bytes_per_second") or 0))
    pct = 100.0 * done / total if total else 100.0
    eta = _duration((total - done) / rate) if rate and phase == "copying" else "-"
    files = min(int(progress.get("files_done") or 0), int(progress.get("files_total") or 0))
    return (
        f"copy {phase}: copied {done / 1048576:.1f} of {total / 1048576:.1f} MiB ({pct:.1f}%), {files} of {progress.get('files_total') or 0} files, "
        f"{rate / 1048576:.1f} MiB/s, elapsed {_duration(elapsed)}, ETA {eta}"
    )
