# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End what an interrupted standby_backup run left on its backup host (backup_abort): keepers, the async copy.

A run whose controller died (Ctrl-C twice, SIGKILL, a lost AWX job) leaves, on the host the role ran on, the keeper
holding the backup session open (up to max_duration) and the async datadir_copy writing into the destination; on the
standby, the slot (dropped by the role's tasks with wal_retain, by the names returned here).

Only what is ours is touched:

- keepers: the backup ids in ``state_dir`` (one directory each, see keeper_files), ended with backup_stop's abort;
- the copy: an async job (a session led by async_wrapper) that runs datadir_copy and writes into ``dest`` (a process of
  the session names ``dest`` on its command line, as rsync does, or holds a file under it open); never a process found
  by its name alone, never another user's;
- snapshot sets: the record standby_backup wrote beside a keeper before snapshotting (keeper_files.SNAPSHOT_SET) is
  returned, for the role to release the set on the host it names (volume_snapshot action=release, idempotent).
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import time
from typing import Optional

from . import copy_gate, copy_state
from .errors import PgBackupError
from .session import backup_session, keeper_files, keeper_protocol
from .slots import DEFAULT_PREFIX, slot_name_for_backup

ABORT_REASON = "ended by the abort of standby_backup (its run was interrupted)"
SCAN_SECONDS = 3.0


# --- keepers -----------------------------------------------------------------------------------------------------


def keeper_state(state_dir: str, backup_id: str) -> dict:
    """What the keeper of ``backup_id`` is doing: running, starting, stopped, aborted, gone or unknown."""
    directory = keeper_files.session_dir(state_dir, backup_id)
    pid = keeper_files.read_pid(directory)
    info = {"backup_id": backup_id, "keeper_pid": pid, "session_dir": directory}
    if not os.path.isdir(directory):
        return dict(info, state="unknown")
    if keeper_files.read_json(directory, keeper_files.STOPPED) is not None:
        return dict(info, state="stopped")
    aborted = keeper_files.read_json(directory, keeper_files.ABORTED)
    if aborted is not None:
        return dict(info, state="aborted", reason=aborted.get("reason"))
    started = keeper_files.read_json(directory, keeper_files.STARTED)
    if started is None:
        return dict(info, state="starting" if keeper_files.pid_alive(pid) else "gone")
    info["server"] = started.get("server_role")
    try:
        answer = keeper_protocol.request(directory, keeper_files.SOCKET, {"op": "status"}, timeout=30)
    except (socket.timeout, TimeoutError):
        return dict(info, state="busy")
    except keeper_protocol.KeeperUnreachable:
        return dict(info, state="gone")
    return dict(info, state=answer.get("state") or "running")


def _ids(state_dir: str, backup_id: Optional[str]) -> list:
    if backup_id:
        return [keeper_files.check_backup_id(backup_id)]
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PgBackupError(f"cannot list state_dir {state_dir}: {exc.strerror}") from None
    return sorted(n for n in names if keeper_files.BACKUP_ID.match(n) and os.path.isdir(os.path.join(state_dir, n)))


def snapshot_set(state_dir: str, backup_id: str) -> Optional[dict]:
    """The snapshot set a run of ``backup_id`` recorded before it snapshotted (None: it made none), checked so that a
    damaged record is refused by name rather than released with guessed paths."""
    directory = keeper_files.session_dir(state_dir, backup_id)
    record = keeper_files.read_json(directory, keeper_files.SNAPSHOT_SET)
    if record is None:
        return None
    if keeper_files.snapshot_set_problem(record) is not None:
        raise PgBackupError(
            f"{os.path.join(directory, keeper_files.SNAPSHOT_SET)} is not a snapshot set record (name, host, provider and absolute paths): "
            f"found {record!r}; release the set pgbackup-{backup_id} by hand with volume_snapshot action=release on the host that holds it"
        )
    return {"backup_id": backup_id, "name": record["name"], "host": record["host"], "provider": record["provider"], "paths": record["paths"]}


# --- the copy ----------------------------------------------------------------------------------------------------


def _procs() -> list:
    """(pid, sid, argv, fds) of this user's processes."""
    me = os.geteuid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{pid}").st_uid != me:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = [os.fsdecode(a) for a in handle.read().split(b"\0") if a]
            sid = os.getsid(pid)
        except OSError:
            continue
        fds = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            pass
        out.append((pid, sid, argv, fds))
    return out


def _under(path: str, root: str) -> bool:
    path = path.rstrip("/") or "/"
    return path == root or path.startswith(root + "/")


def _jid(argv: list) -> Optional[str]:
    for i, arg in enumerate(argv):
        if "async_wrapper" in os.path.basename(arg) and i + 1 < len(argv):
            return argv[i + 1]
    return None


def find_copies(dest: str) -> list:
    """The async datadir_copy jobs of this user writing into ``dest``: [{"jid", "sid", "pids", "commands"}]."""
    root = os.path.realpath(dest).rstrip("/") or "/"
    marks = {root, dest.rstrip("/") or "/"}
    procs = _procs()
    by_sid: dict = {}
    for proc in procs:
        by_sid.setdefault(proc[1], []).append(proc)
    own_sid = os.getsid(0)
    jobs = []
    for sid, members in by_sid.items():
        if sid == own_sid:
            continue
        jids = [j for j in (_jid(argv) for _pid, _sid, argv, _fds in members) if j]
        if not jids:
            continue  # not an Ansible async job
        runs_copy = any("datadir_copy" in os.path.basename(a) for _pid, _sid, argv, _fds in members for a in argv)
        writes_dest = any(any(_under(a, m) for a in argv for m in marks) or any(_under(f, m) for f in fds for m in marks) for _pid, _sid, argv, fds in members)
        if runs_copy and writes_dest:
            jobs.append(
                {
                    "jid": jids[0],
                    "sid": sid,
                    "pids": sorted(pid for pid, _sid, _argv, _fds in members),
                    "commands": [" ".join(argv)[:200] for _pid, _sid, argv, _fds in sorted(members)],
                    "copy_pids": sorted(pid for pid, _sid, argv, _fds in members if any("datadir_copy" in os.path.basename(a) for a in argv)),
                }
            )
    return jobs


def find_copies_settled(dest: str, seconds: float = SCAN_SECONDS) -> list:
    """find_copies, looked at again for a few seconds while a copy job exists whose processes hold nothing under
    ``dest`` at the moment (between two files)."""
    deadline = time.monotonic() + seconds
    while True:
        jobs = find_copies(dest)
        if jobs or time.monotonic() >= deadline or not _copy_jobs_exist():
            return jobs
        time.sleep(0.2)


def _copy_jobs_exist() -> bool:
    return any(_jid(argv) for _pid, _sid, argv, _fds in _procs()) and any(
        "datadir_copy" in os.path.basename(a) for _pid, _sid, argv, _fds in _procs() for a in argv
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_job(job: dict, grace: float = 5.0) -> list:
    """SIGTERM to every process of the job's session (wrapper, datadir_copy, rsync, ssh), SIGKILL after ``grace``."""
    pids = job["pids"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                if os.getsid(pid) == job["sid"]:
                    os.kill(pid, sig)
            except OSError:
                pass  # gone meanwhile (its pid is not reused for another session's process: getsid checked it)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    return pids


def _remove_leftovers(dest: str, copy_pids: list) -> list:
    """The copy's progress file and rsync file lists beside ``dest`` (what its finally/the role would have removed)."""
    parent, base = os.path.split(dest.rstrip("/"))
    names = [os.path.join(parent, f".{base}.progress.json"), os.path.join(parent, f".{base}.progress.json.tmp")]
    for pid in copy_pids:
        names += glob.glob(os.path.join(glob.escape(parent), f".pgbackup-files-{pid}-*"))
    removed = []
    for name in names:
        try:
            os.unlink(name)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def gate_path(dest: str) -> str:
    """The start gate of a copy into ``dest`` (copy_gate), beside it as the roles place it."""
    parent, base = os.path.split(dest.rstrip("/"))
    return os.path.join(parent, f".{base}.gate")


def _cancel_waiting_copy(dest: str, check_mode: bool) -> Optional[dict]:
    """A copy launched behind its start gate that still waits there (the play ended before the backup's start was
    replayed) has written nothing and holds nothing under ``dest``: cancel it through its gate."""
    path = gate_path(dest)
    waiting = copy_gate.waiting_copy(path)
    if waiting is None:
        return None
    pid, token = waiting
    entry = {"jid": "waiting at its start gate", "pids": [pid], "commands": [f"datadir_copy waiting at its start gate {path}"], "gate": path}
    if not check_mode:
        copy_gate.cancel_gate(path, token)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        entry["cancelled"] = True
    return entry


# --- the whole abort ---------------------------------------------------------------------------------------------


def dest_written(dest: str) -> bool:
    """Whether datadir_copy wrote into ``dest`` and left it unfinished or without its label (marker or pending pg_control)."""
    return copy_state.is_incomplete(dest) or os.path.lexists(os.path.join(dest, copy_state.PENDING_CONTROL))


def abort(*, state_dir: str, backup_id: Optional[str], dest: Optional[str], slot_prefix: str = DEFAULT_PREFIX, check_mode: bool = False) -> dict:
    """End the copy into ``dest`` and the keepers of ``backup_id`` (or of every id in ``state_dir``)."""
    ids = _ids(state_dir, backup_id)
    copies = find_copies_settled(dest) if dest else []
    stopped_copies = []
    for job in copies:
        entry = {"jid": job["jid"], "pids": job["pids"], "commands": job["commands"]}
        if not check_mode:
            entry["killed"] = kill_job(job)
            entry["removed"] = _remove_leftovers(dest, job["copy_pids"])
        stopped_copies.append(entry)
    gated = _cancel_waiting_copy(dest, check_mode) if dest else None
    if gated:
        stopped_copies.append(gated)
    keepers, aborted = [], []
    for name in ids:
        info = keeper_state(state_dir, name)
        keepers.append(info)
        if info["state"] not in ("running", "busy", "stopping"):
            continue
        if check_mode:
            aborted.append(dict(info, action="would abort"))
            continue
        result = backup_session.stop_backup(backup_id=name, state_dir=state_dir, state="aborted", wait_for_archive=False, timeout=60, check_mode=False)
        aborted.append(dict(info, action="aborted", changed=result.get("changed"), reason=result.get("reason")))
    slot_names = []
    for name in ids:
        try:
            slot_names.append(slot_name_for_backup(name, slot_prefix))
        except PgBackupError:
            continue  # an id that never made a slot name (the role refuses it before making one)
    ended = bool(stopped_copies or aborted)
    sets = [found for found in (snapshot_set(state_dir, name) for name in ids) if found]
    return {
        "snapshot_sets": sets,
        "changed": ended,
        "backup_ids": ids,
        "keepers": keepers,
        "aborted": aborted,
        "copies": stopped_copies,
        "slot_names": slot_names,
        "dest": dest,
        # a copy cancelled at its start gate wrote nothing there
        "dest_written": bool(dest) and os.path.isdir(dest) and (any(not c.get("gate") for c in stopped_copies) or dest_written(dest)),
        "dest_marked": bool(dest) and copy_state.is_incomplete(dest),
    }
