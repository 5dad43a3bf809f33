# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What backup_start and backup_stop do, without Ansible: find, start, stop or abort the backup of an id.

backup_start makes ``<state_dir>/<backup_id>/`` (mkdir is the lock against a second start of one id), forks
the keeper, which connects and starts the backup, and returns what the keeper reported. backup_stop reads the
state files first (a stored result answers a retry), then asks the keeper over its socket; a keeper that is
gone means PostgreSQL aborted the backup with its session.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
from typing import Any, Callable, Optional

from ..connection import connect
from ..errors import PgBackupError
from . import backup_api, keeper, keeper_files, keeper_protocol

KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "6"}
SERVER_KEEPALIVES = {"tcp_keepalives_idle": "60", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "6"}
SECRET_ENVIRONMENT = ("PGPASSWORD",)


def application_name(backup_id: str) -> str:
    return f"pgbackup.lowlevel keeper {backup_id}"[:63]


def keeper_params(params: dict) -> dict:
    """Connection params with TCP keepalives on unless the user chose otherwise in connect_params."""
    params = dict(params)
    extra = dict(KEEPALIVES)
    extra.update(params.get("connect_params") or {})
    params["connect_params"] = extra
    return params


def scrub_environment(names: tuple = SECRET_ENVIRONMENT) -> None:
    """Remove secrets from the environment, including the copy /proc/<pid>/environ shows (the process's first env block)."""
    for name in names:
        os.environ.pop(name, None)
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        env_start, env_end = int(fields[47]), int(fields[48])  # fields 50 and 51 of proc(5)
    except (OSError, IndexError, ValueError):
        return
    if not 0 < env_start < env_end:
        return
    block = ctypes.string_at(env_start, env_end - env_start)
    offset = 0
    for entry in block.split(b"\0"):
        for name in names:
            prefix = name.encode("ascii") + b"="
            if entry.startswith(prefix) and len(entry) > len(prefix):
                ctypes.memset(env_start + offset + len(prefix), ord("*"), len(entry) - len(prefix))
        offset += len(entry) + 1


# --- backup_start ----------------------------------------------------------------------------------


def open_session(params: dict, backup_id: str, connect_function: Optional[Callable] = None) -> Any:
    session = connect(keeper_params(params), application_name=application_name(backup_id), settings=SERVER_KEEPALIVES, connect_function=connect_function)
    if session.server_version_num >= 140000:
        session.query("SET idle_session_timeout = 0")
    session.query("SET idle_in_transaction_session_timeout = 0")
    return session


def backend_pid(session: Any) -> int:
    return int(session.query("SELECT pg_backend_pid() AS pid", record=False)[0]["pid"])


def pooler_check(params: dict, backup_id: str, session: Any, first_pid: int, connect_function: Optional[Callable] = None) -> Optional[str]:
    """Refuse a session a pooler does not keep on one server process (see backup_api.pooled_session_problem).

    A second connection that is refused (a role's CONNECTION LIMIT 1, max_connections reached) leaves only the check
    that the session's own server process does not change."""
    try:
        with connect(keeper_params(params), application_name=application_name(backup_id), connect_function=connect_function) as second:
            second_pid: Optional[int] = backend_pid(second)
    except PgBackupError:
        second_pid = None
    return backup_api.pooled_session_problem(session.target, first_pid, second_pid, backend_pid(session))


STOP_WAIT_SQL = (
    "SELECT a.wait_event_type, a.wait_event, ar.archived_count, ar.last_archived_wal, ar.failed_count, ar.last_failed_wal, "
    "ar.last_failed_time::text AS last_failed_time, current_setting('archive_mode') AS archive_mode "
    "FROM pg_catalog.pg_stat_archiver ar LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = %s"
)


def stop_wait_probe(params: dict, backup_id: str, pid: int, connect_function: Optional[Callable] = None) -> Callable[[], dict]:
    """A look, on a connection of its own, at what the stopping backend ``pid`` waits for and at the archiver."""

    def probe() -> dict:
        name = f"pgbackup.lowlevel stop watch {backup_id}"[:63]  # not the keeper's name: tools count keeper sessions
        with connect(keeper_params(params), application_name=name, connect_function=connect_function) as second:
            (row,) = second.query(STOP_WAIT_SQL, (pid,), record=False)
            return {"server": second.target, **row}

    return probe


def _server_problems(params: dict, backup_id: str, session: Any) -> tuple:
    """(the server's snapshot, what refuses a start there): settings, privileges, a pooler. One function for check
    mode and the keeper, so check mode refuses what a start would."""
    snapshot = backup_api.server_snapshot(session.query)
    problems = backup_api.preflight(session.query, snapshot)
    pooled = pooler_check(params, backup_id, session, int(snapshot["backend_pid"]))
    if pooled:
        problems.append(pooled)
    return snapshot, problems


def _refuse_start(problems: list) -> None:
    if problems:
        raise PgBackupError("the backup cannot start: " + "; ".join(problems), problems=problems)


def check_only(params: dict, backup_id: str) -> dict:
    """Check mode: connect, check settings and privileges, start nothing."""
    with open_session(params, backup_id) as session:
        snapshot, problems = _server_problems(params, backup_id, session)
    _refuse_start(problems)
    return {
        "server_role": "standby" if snapshot["in_recovery"] else "primary",
        "server_version": snapshot["server_version"],
        "system_identifier": snapshot["system_identifier"],
        "start_timeline": snapshot["timeline"],
        "timeline": snapshot["timeline"],
        "queries": list(session.queries),
    }


def _listen(directory: str) -> socket.socket:
    """The keeper's socket, owner-only. Bound before pg_backup_start, so a keeper that cannot listen fails before it
    has started anything."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with keeper_protocol.socket_path(directory, keeper_files.SOCKET) as path:
        listener.bind(path)
    os.chmod(os.path.join(directory, keeper_files.SOCKET), 0o600)
    listener.listen(8)
    return listener


def _start_on(session: Any, before: dict, *, label: str, fast: bool) -> tuple:
    """(what pg_backup_start returned, the start's WAL position); refused when the session moved to another server
    process meanwhile (a pooler), since the backup is held by the process that started it."""
    version = int(before["server_version_num"])
    in_recovery = bool(before["in_recovery"])
    started = backup_api.start(session.query, label=label, fast=fast, version_num=version, in_recovery=in_recovery, target=session.target)
    after = backup_api.server_snapshot(session.query)
    moved = backup_api.moved_session_problem(session.target, int(before["backend_pid"]), int(after["backend_pid"]))
    if moved:
        raise PgBackupError(f"the backup cannot be held: {moved}")
    position = backup_api.start_position(before, after, started["start_lsn"], int(before["wal_segment_size"]))
    return started, position


def _started_result(
    directory: str, session: Any, before: dict, started: dict, position: dict, *, backup_id: str, label: str, max_duration: float, state_dir: str
) -> dict:
    """What backup_start returns and started.json keeps."""
    return {
        "backup_id": backup_id,
        "label": label,
        "start_lsn": started["start_lsn"],
        "started_at": started["started_at"],
        "start_attempts": started["start_attempts"],
        "server_role": "standby" if before["in_recovery"] else "primary",
        "server_version": before["server_version"],
        "server_version_num": int(before["server_version_num"]),
        "system_identifier": before["system_identifier"],
        "wal_segment_size": int(before["wal_segment_size"]),
        "keeper_pid": os.getpid(),
        "backend_pid": before["backend_pid"],
        "application_name": application_name(backup_id),
        "max_duration": max_duration,
        "state_dir": state_dir,
        "session_dir": directory,
        **position,
        "queries": list(session.queries),  # what the keeper's session ran up to the start (community.postgresql's habit)
    }


def _record_start(directory: str, result: dict) -> None:
    keeper_files.write_json(directory, keeper_files.STARTED, result)
    keeper_files.log_line(directory, f"started at {result['start_lsn']} on the {result['server_role']}, backend pid {result['backend_pid']}")


def _running_keeper(directory: str, params: dict, session: Any, result: dict, *, max_duration: float, server_started_at: Any) -> keeper.Keeper:
    """The keeper of the started backup. The SIGTERM handler goes in first: from then on SIGTERM no longer kills the
    process (and with it the session); it interrupts only a keeper that says it may be interrupted."""
    holder: list = []
    keeper.install_sigterm_handler(holder)
    probe = stop_wait_probe(params, result["backup_id"], int(result["backend_pid"]))
    running = keeper.Keeper(directory, session, result, max_duration=max_duration, server_started_at=server_started_at, stop_probe=probe)
    holder.append(running)
    return running


def _serve(running: keeper.Keeper, listener: socket.socket, directory: str) -> int:
    try:
        running.serve(listener)
    finally:
        listener.close()
        try:
            os.unlink(os.path.join(directory, keeper_files.SOCKET))
        except OSError:
            pass
    return 0


def _keeper_main(directory: str, params: dict, *, backup_id: str, label: str, fast: bool, max_duration: float, state_dir: str) -> Callable:
    def main(report: Callable[[dict], None]) -> int:
        # The order is the backup's safety: refuse before listening, listen before starting (a keeper that cannot
        # listen has started nothing), started.json durable before the report (a retry of backup_start or backup_stop
        # reads it), the SIGTERM handler before the report.
        try:
            session = open_session(params, backup_id)
            scrub_environment()
            before, problems = _server_problems(params, backup_id, session)
            _refuse_start(problems)
            listener = _listen(directory)
            started, position = _start_on(session, before, label=label, fast=fast)
        except PgBackupError as exc:
            keeper_files.log_line(directory, f"start failed: {exc.message}")
            report({"ok": False, "error": exc.message, "details": {k: v for k, v in exc.details.items() if k != "server_message"}})
            return 1
        result = _started_result(
            directory, session, before, started, position, backup_id=backup_id, label=label, max_duration=max_duration, state_dir=state_dir
        )
        _record_start(directory, result)
        running = _running_keeper(directory, params, session, result, max_duration=max_duration, server_started_at=started["_started"])
        report({"ok": True, "result": result})
        return _serve(running, listener, directory)

    return main


def _ask(directory: str, op: dict, timeout: Optional[float]) -> Optional[dict]:
    """The keeper's answer, or None when no keeper answers."""
    try:
        return keeper_protocol.request(directory, keeper_files.SOCKET, op, timeout=timeout)
    except keeper_protocol.KeeperUnreachable:
        return None


def _lost_keeper(directory: str, backup_id: str) -> str:
    pid = keeper_files.read_pid(directory)
    reason = f"the keeper of backup {backup_id} (pid {pid}) is gone, so its session closed and PostgreSQL aborted the backup"
    if keeper_files.read_json(directory, keeper_files.ABORTED) is None:
        keeper_files.write_json(directory, keeper_files.ABORTED, {"reason": reason, "aborted_at": None})
    return reason


def start_backup(
    params: dict, *, backup_id: str, label: str, fast: bool, max_duration: float, state_dir: str, timeout: float, snapshot_set: Optional[dict] = None
) -> dict:
    """Start the backup of ``backup_id``, or return the running one (changed false). ``snapshot_set`` (a checked
    record, keeper_files.SNAPSHOT_SET) is written into the session directory before the start: the set the caller
    makes next is then named where backup_abort looks, whatever happens to the caller after the start."""
    directory = keeper_files.session_dir(state_dir, backup_id)
    if os.path.isdir(directory):
        existing = existing_start(directory, backup_id)
        if existing is not None:
            if snapshot_set and keeper_files.read_json(directory, keeper_files.SNAPSHOT_SET) is None:
                keeper_files.write_json(directory, keeper_files.SNAPSHOT_SET, snapshot_set)
            return dict(existing, changed=False)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        raise PgBackupError(f"backup {backup_id} is being started by another task right now (its directory {directory} appeared meanwhile)") from None
    except OSError as exc:
        raise PgBackupError(f"cannot create {directory}: {exc.strerror}; check state_dir") from None
    if snapshot_set:
        keeper_files.write_json(directory, keeper_files.SNAPSHOT_SET, snapshot_set)  # removed with the directory if the start fails
    main = _keeper_main(directory, params, backup_id=backup_id, label=label, fast=fast, max_duration=max_duration, state_dir=state_dir)
    report = keeper.launch(directory, main, timeout=timeout)
    if not report.get("ok"):
        shutil.rmtree(directory, ignore_errors=True)  # nothing started: the id may be used again
        raise PgBackupError(report.get("error") or "the backup did not start", **(report.get("details") or {}))
    return dict(report["result"], changed=True)


def existing_start(directory: str, backup_id: str) -> Optional[dict]:
    """The running backup of this id, None when a leftover of a failed start was cleared; else a refusal."""
    started = keeper_files.read_json(directory, keeper_files.STARTED)
    for name, what in ((keeper_files.STOPPED, "was stopped"), (keeper_files.ABORTED, "was aborted")):
        if keeper_files.read_json(directory, name) is not None:
            raise PgBackupError(
                f"backup {backup_id} already {what} (see {directory}); a backup id is used once: choose a new backup_id, "
                f"or remove {directory} once its result is no longer needed"
            )
    pid = keeper_files.read_pid(directory)
    if started is None:
        if keeper_files.pid_alive(pid):
            raise PgBackupError(f"backup {backup_id} is being started by another task (keeper pid {pid}); wait for it or choose another backup_id")
        shutil.rmtree(directory, ignore_errors=True)  # a start that died before starting anything
        return None
    try:
        answer = _ask(directory, {"op": "status"}, timeout=30)
    except (socket.timeout, TimeoutError):
        raise PgBackupError(f"the keeper of backup {backup_id} (pid {pid}) is busy (stopping?) and did not answer within 30 seconds; try again") from None
    if answer is not None and answer.get("state") == "stopping":
        raise PgBackupError(f"backup {backup_id} is being stopped; a backup id is used once: choose a new backup_id")
    if answer is None or answer.get("state") != "running":
        reason = _lost_keeper(directory, backup_id)
        raise PgBackupError(f"{reason}; {backup_api.ABORTED_ADVICE}; choose a new backup_id")
    return answer["result"]


# --- backup_stop -----------------------------------------------------------------------------------


def _known_ids(state_dir: str) -> list:
    try:
        return sorted(name for name in os.listdir(state_dir) if keeper_files.BACKUP_ID.match(name))
    except OSError:
        return []


def _stopped(directory: str, started: dict, stored: dict, changed: bool) -> dict:
    keys = (
        "backup_id",
        "label",
        "start_lsn",
        "start_wal_file",
        "start_timeline",
        "timeline",
        "checkpoint_lsn",
        "server_role",
        "system_identifier",
        "started_at",
    )
    result = {k: started.get(k) for k in keys}
    result.update(stored)
    result.update(changed=changed, state="stopped", session_dir=directory)
    return result


def describe_stop_wait(seen: Optional[dict], started: dict) -> str:
    """What a stop that has not answered is waiting for, from the keeper's last look (stop_wait.json), in words."""
    where = f"on {seen['server']}" if seen and seen.get("server") else f"in backend {started.get('backend_pid')}"
    if not seen:
        return f"It is most likely waiting for WAL archiving (wait_for_archive): check archive_command and the server log {where}."
    if seen.get("error"):
        return f"What it waits for could not be read ({seen['error']}): check archive_command and the server log {where}."
    text = f"It has run {seen.get('stopping_for_seconds', '?')} s {where}"
    event = seen.get("wait_event")
    if event:
        text += f", its backend waiting on {seen.get('wait_event_type')}/{event}"
        if event == "BackupWaitWalArchive":
            text += " (WAL archiving: wait_for_archive)"
    text += (
        f"; archive_mode={seen.get('archive_mode')}, pg_stat_archiver: {seen.get('archived_count')} archived, last "
        f"{seen.get('last_archived_wal') or 'none'}, {seen.get('failed_count')} failures"
    )
    if seen.get("last_failed_wal"):
        text += f", last failed {seen['last_failed_wal']} at {seen.get('last_failed_time')}: archive_command fails, its error is in the server log"
    return text + "."


def stop_backup(
    *,
    backup_id: str,
    state_dir: str,
    state: str,
    wait_for_archive: bool,
    timeout: float,
    expect_system_identifier: Optional[str] = None,
    expect_timeline: Optional[int] = None,
    check_mode: bool = False,
) -> dict:
    """Stop (or abort) the backup of ``backup_id`` through its keeper; a stored result answers a retry."""
    directory = keeper_files.session_dir(state_dir, backup_id)
    started = _started_or_refuse(directory, backup_id, state_dir)
    ended = _ended(directory, backup_id, started, state)
    if ended is not None:
        return ended
    if check_mode:
        return _check_stop(directory, backup_id, state)
    if state == "aborted":
        request: dict = {"op": "abort", "reason": "backup_stop was called with state=aborted"}
    else:
        request = {"op": "stop", "wait_for_archive": wait_for_archive, "expect_system_identifier": expect_system_identifier, "expect_timeline": expect_timeline}
    answer = _ask_to_end(directory, backup_id, started, request, state=state, timeout=timeout)
    if answer is None:
        return _ended_without_keeper(directory, backup_id, started, state)
    if not answer.get("ok"):
        raise PgBackupError(f"backup {backup_id}: {answer.get('error')}", state=answer.get("state"))
    if state == "aborted":
        return {"changed": True, "state": "aborted", "backup_id": backup_id, "reason": (answer.get("result") or {}).get("reason"), "session_dir": directory}
    return _stopped(directory, started, answer["result"], changed=not answer.get("joined"))


def _started_or_refuse(directory: str, backup_id: str, state_dir: str) -> dict:
    """started.json of ``backup_id``; an id never started here is refused with the ids that were."""
    started = keeper_files.read_json(directory, keeper_files.STARTED) if os.path.isdir(directory) else None
    if started is None:
        known = _known_ids(state_dir)
        raise PgBackupError(
            f"unknown backup_id {backup_id}: no backup with this id was started with state_dir {state_dir} on this host as uid {os.geteuid()} "
            f"(known there: {', '.join(known) if known else 'none'}); run backup_stop on the host, as the user and with the state_dir of backup_start"
        )
    return started


def _ended(directory: str, backup_id: str, started: dict, state: str) -> Optional[dict]:
    """The stored end of the backup, None while it runs: a stop's result, or its abort (a refusal unless an abort was asked)."""
    stored = keeper_files.read_json(directory, keeper_files.STOPPED)
    if stored is not None:
        return _stopped(directory, started, stored, changed=False)
    aborted = keeper_files.read_json(directory, keeper_files.ABORTED)
    if aborted is not None:
        if state == "aborted":
            return {"changed": False, "state": "aborted", "backup_id": backup_id, "reason": aborted["reason"], "session_dir": directory}
        raise PgBackupError(f"backup {backup_id} was aborted: {aborted['reason']}. {backup_api.ABORTED_ADVICE}", reason=aborted["reason"])
    return None


def _check_stop(directory: str, backup_id: str, state: str) -> dict:
    """Check mode: the keeper is there (a busy one counts), nothing is asked of it."""
    try:
        answer = _ask(directory, {"op": "status"}, timeout=30)
    except (socket.timeout, TimeoutError):
        answer = {"state": "busy"}
    if answer is None:
        raise PgBackupError(f"{_lost_keeper(directory, backup_id)}. {backup_api.ABORTED_ADVICE}")
    return {"changed": True, "state": state, "backup_id": backup_id, "session_dir": directory}


def _ask_to_end(directory: str, backup_id: str, started: dict, request: dict, *, state: str, timeout: float) -> Optional[dict]:
    """The keeper's answer to the stop or abort, None when no keeper answers; a timeout says what the stop waits for."""
    try:
        return _ask(directory, request, timeout=timeout)
    except (socket.timeout, TimeoutError):
        waiting = keeper_files.read_json(directory, keeper_files.STOP_WAIT) if state != "aborted" else None
        raise PgBackupError(
            f"the keeper of backup {backup_id} did not answer within {timeout:g} seconds; the stop goes on and is never cancelled "
            f"(a cancelled stop loses the label). {describe_stop_wait(waiting, started)} Run backup_stop again to collect the result",
            session_dir=directory,
            waiting=waiting,
        ) from None


def _ended_without_keeper(directory: str, backup_id: str, started: dict, state: str) -> dict:
    """No keeper answered: the stop's stored result, else the abort the keeper's end caused (a refusal unless an abort was asked)."""
    # The keeper may have finished between our reads (the answer to an earlier, abandoned request).
    stored = keeper_files.read_json(directory, keeper_files.STOPPED)
    if stored is not None:
        return _stopped(directory, started, stored, changed=False)
    reason = _lost_keeper(directory, backup_id)
    if state == "aborted":
        return {"changed": False, "state": "aborted", "backup_id": backup_id, "reason": reason, "session_dir": directory}
    raise PgBackupError(f"backup {backup_id} was aborted: {reason}. {backup_api.ABORTED_ADVICE}", reason=reason)
