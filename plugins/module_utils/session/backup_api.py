# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's low-level backup API by version, on one Session: preflight, start and stop.

13-14 have ``pg_start_backup(label, fast, exclusive)`` / ``pg_stop_backup(exclusive, wait)``, where
exclusive is the default and must always be passed as false; 15+ have ``pg_backup_start(label, fast)`` /
``pg_backup_stop(wait)``. The label and tablespace map come back as text in the database encoding;
``convert_to(..., server encoding)`` hands us their bytes unchanged, so what we return is byte for
byte what PostgreSQL would have written (see docs/postgres-internals.md, section 1).
"""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any, Callable, Optional

from ..errors import PgBackupError
from ..lsn import format_lsn, parse_lsn
from ..system_identifier import expected_system_identifier
from ..wal import wal_file_name_of_lsn

MAX_LABEL_BYTES = 1023  # recovery reads at most 1023 bytes of "LABEL: ..." (the server itself allows 1024)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# Messages of a stop whose session no longer holds the backup (15+ / 13-14 wording).
NOT_IN_PROGRESS = ("backup is not in progress", "non-exclusive backup is not in progress")
ARCHIVE_WAIT_NOTICES = ("waiting for required wal segments to be archived", "still waiting for all required wal segments")

ABORTED_ADVICE = (
    "PostgreSQL aborted the backup when its session ended, so no usable backup_label exists for it: "
    "discard every file copied under this backup and take a new one"
)


def check_label(label: object) -> str:
    """The label, or a refusal before anything starts: no control characters, at most 1023 bytes."""
    if not isinstance(label, str) or label == "":
        raise PgBackupError(f"label must be a non-empty string, got {label!r}")
    bad = _CONTROL_CHARACTER.search(label)
    if bad:
        raise PgBackupError(
            f"label contains the control character {bad.group()!r} at position {bad.start()}: backup_label keeps the label on one line "
            "(LABEL: ...), so a newline or another control character would corrupt it; use a label without control characters"
        )
    size = len(label.encode("utf-8"))
    if size > MAX_LABEL_BYTES:
        raise PgBackupError(f"label is {size} bytes long; recovery reads at most {MAX_LABEL_BYTES} bytes of it: use a shorter label")
    return label


def _b64(data: Optional[bytes]) -> str:
    return base64.b64encode(bytes(data or b"")).decode("ascii")


def text_of(data: Optional[bytes]) -> str:
    """Bytes from the server as text for Ansible output (exact bytes are in the *_base64 fields)."""
    return bytes(data or b"").decode("utf-8", "replace")


def _iso(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat()
    return str(value)


def server_snapshot(query: Callable[..., list]) -> dict:
    """What the start and the checks need to know about the server, in one round trip."""
    (row,) = query(
        "SELECT current_setting('server_version') AS server_version, current_setting('server_version_num')::int AS server_version_num, "
        "pg_is_in_recovery() AS in_recovery, s.system_identifier::text AS system_identifier, "
        "current_setting('wal_level') AS wal_level, current_setting('full_page_writes') AS full_page_writes, "
        "current_setting('archive_mode') AS archive_mode, "
        "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS wal_segment_size, "
        "pg_backend_pid() AS backend_pid, c.checkpoint_lsn::text AS checkpoint_lsn, c.redo_lsn::text AS redo_lsn, c.timeline_id AS timeline "
        "FROM pg_control_system() s, pg_control_checkpoint() c"
    )
    return row


def function_signatures(version_num: int) -> tuple:
    if version_num >= 150000:
        return ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
    return ("pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)")


def preflight(query: Callable[..., list], snapshot: dict) -> list:
    """Problems that would make a start fail or a backup unusable, as messages (empty when all is well)."""
    problems = []
    version = int(snapshot["server_version_num"])
    if version < 130000:
        problems.append(f"server version {snapshot['server_version']} is not supported: this collection supports PostgreSQL 13 to 18")
    if not snapshot["in_recovery"] and snapshot["wal_level"] not in ("replica", "logical"):
        problems.append(f"wal_level is {snapshot['wal_level']!r}; an online backup needs 'replica' or 'logical': set it and restart the server")
    if snapshot["full_page_writes"] != "on":
        problems.append("full_page_writes is off; a backup taken while torn pages are possible is unusable: set full_page_writes = on and reload")
    for signature in function_signatures(version):
        (row,) = query("SELECT has_function_privilege(%s, 'EXECUTE') AS allowed", (signature,))
        if not row["allowed"]:
            problems.append(f"the role may not execute {signature}: connect as a superuser or GRANT EXECUTE ON FUNCTION {signature} TO the role")
    return problems


# A connection pooler in transaction (or statement) pooling hands the server process back to its pool after each
# transaction: the start, the hold and the stop of one backup then run in different server sessions, the stop fails
# ("not in progress") and the real backup stays open in a pooled server process until the pooler closes it. Session
# pooling keeps one server process per client and is fine. Two signs, both cheap: a second connection served by the
# same server process as the first one (pgbouncer reuses the most recently released server connection), or the first
# connection's server process changing between two statements.
POOLER_ADVICE = (
    "a backup's start, hold and stop must run in one server session: connect the backup to PostgreSQL itself (login_host and "
    "login_port of the server, not of the pooler) or through a pool in session mode (pgbouncer: pool_mode = session)"
)


def pooled_session_problem(target: str, first_pid: int, second_pid: Optional[int], first_pid_again: int) -> Optional[str]:
    """Why the session on ``target`` is not one server process for its whole life, or None when it is.

    ``first_pid`` and ``first_pid_again``: pg_backend_pid() of the session in two transactions; ``second_pid``: that of
    a second connection opened in between (None when it could not connect)."""
    if first_pid_again != first_pid:
        seen = f"one connection was served by server process {first_pid}, then by {first_pid_again}"
    elif second_pid == first_pid:
        seen = f"two connections were both served by server process {first_pid}"
    else:
        return None
    return f"the connection to {target} goes through a connection pooler in transaction or statement pooling mode ({seen}): {POOLER_ADVICE}"


def moved_session_problem(target: str, started_pid: int, now_pid: int) -> Optional[str]:
    """The re-check before the stop: the session must still be the server process the backup started in."""
    if now_pid == started_pid:
        return None
    return (
        f"the backup's session on {target} now runs in server process {now_pid}, but the backup started in process {started_pid}: "
        f"a connection pooler moved it. That backup stays open in process {started_pid} until the pooler closes it "
        f"(SELECT pg_terminate_backend({started_pid}) on the server ends it); {POOLER_ADVICE}"
    )


# A start on a hot standby is one long statement (with fast false it waits for the next restartpoint, up to
# checkpoint_timeout), and its snapshot conflicts with the cleanup records the startup process replays meanwhile:
# after max_standby_streaming_delay PostgreSQL cancels it with SQLSTATE 40001. The cancelled start leaves no backup
# behind (its error cleanup ends the backup state), so it is tried again, a bounded number of times.
RECOVERY_CONFLICT = "40001"
START_ATTEMPTS = 3


def start(query: Callable[..., list], *, label: str, fast: bool, version_num: int, in_recovery: bool = False, target: str = "") -> dict:
    """Start a non-exclusive backup in this session; return the start LSN and the server's clock at that moment."""
    if version_num >= 150000:
        sql = "SELECT lsn::text AS lsn, clock_timestamp() AS at FROM pg_backup_start(%s, %s) AS lsn"
    else:
        # Never the exclusive default: it would write backup_label into the live data directory.
        sql = "SELECT lsn::text AS lsn, clock_timestamp() AS at FROM pg_start_backup(%s, %s, false) AS lsn"
    attempt = 1
    while True:
        try:
            (row,) = query(sql, (label, fast))
            break
        except PgBackupError as exc:
            if not in_recovery or exc.details.get("sqlstate") != RECOVERY_CONFLICT:
                raise
            if attempt == START_ATTEMPTS:
                raise PgBackupError(recovery_conflict_advice(target, fast, attempt), sqlstate=RECOVERY_CONFLICT) from None
            attempt += 1
    return {"start_lsn": row["lsn"], "started_at": _iso(row["at"]), "_started": row["at"], "start_attempts": attempt}


def recovery_conflict_advice(target: str, fast: bool, attempts: int) -> str:
    wait = (
        "it waited for the standby's next restartpoint (fast: false), which comes only when a checkpoint record is replayed"
        if not fast
        else "it waited for an immediate restartpoint"
    )
    return (
        f"the standby at {target} cancelled the backup's start {attempts} times with 'canceling statement due to conflict "
        f"with recovery' (SQLSTATE {RECOVERY_CONFLICT}): {wait}, and meanwhile the standby replayed cleanup of rows the "
        "start's snapshot could still see, for longer than its max_standby_streaming_delay. No backup was started. "
        "Start with fast: true (role variable standby_backup_fast), or on the standby set "
        "hot_standby_feedback = on or a larger max_standby_streaming_delay, then run again"
    )


def start_position(before: dict, after: dict, start_lsn: str, seg_size: int) -> dict:
    """Timeline, checkpoint and start WAL file of a start, from pg_control_checkpoint() read before and after it.

    The start point is the redo of a checkpoint (primary) or restartpoint (standby); whichever reading has
    that redo names the checkpoint and its timeline. ``pg_walfile_name`` fails on a standby, so the file
    name is computed here.
    """
    timeline = int(after["timeline"])
    checkpoint = None
    for reading in (after, before):
        if reading["redo_lsn"] is not None and parse_lsn(reading["redo_lsn"]) == parse_lsn(start_lsn):
            timeline, checkpoint = int(reading["timeline"]), reading["checkpoint_lsn"]
            break
    return {
        "start_timeline": timeline,
        "timeline": timeline,  # the name before 0.2.0, kept until 0.3.0 (doc: backup_start's RETURN)
        "checkpoint_lsn": checkpoint,
        "start_wal_file": wal_file_name_of_lsn(timeline, parse_lsn(start_lsn), seg_size),
    }


def stop(query: Callable[..., list], *, wait_for_archive: bool, version_num: int) -> dict:
    """Stop the backup of this session; return the server's answer with the label and map as exact bytes."""
    columns = (
        "SELECT lsn::text AS lsn, convert_to(labelfile, current_setting('server_encoding')) AS labelfile, "
        "convert_to(coalesce(spcmapfile, ''), current_setting('server_encoding')) AS spcmapfile, clock_timestamp() AS at "
    )
    function = "FROM pg_backup_stop(%s)" if version_num >= 150000 else "FROM pg_stop_backup(false, %s)"
    (row,) = query(columns + function, (wait_for_archive,))
    return {"lsn": row["lsn"], "labelfile": bytes(row["labelfile"]), "spcmapfile": bytes(row["spcmapfile"]), "at": row["at"]}


def stop_timeline(query: Callable[..., list], in_recovery: bool) -> int:
    """The timeline of the stop point: the minimum recovery point's on a standby, the current one on a primary."""
    if in_recovery:
        (row,) = query("SELECT min_recovery_end_timeline AS tli, (SELECT timeline_id FROM pg_control_checkpoint()) AS fallback FROM pg_control_recovery()")
        return int(row["tli"] or row["fallback"])
    (row,) = query("SELECT timeline_id AS tli FROM pg_control_checkpoint()")
    return int(row["tli"])


def stop_result(answer: dict, *, timeline: int, seg_size: int, started_at: Any, notices: list) -> dict:
    """What backup_stop returns and the keeper stores: the server's answer, byte for byte, plus where it ended."""
    stop_lsn = parse_lsn(answer["lsn"])
    duration = None
    if isinstance(started_at, datetime.datetime) and isinstance(answer["at"], datetime.datetime):
        duration = round((answer["at"] - started_at).total_seconds(), 3)
    return {
        "stop_lsn": format_lsn(stop_lsn),
        "stop_wal_file": wal_file_name_of_lsn(timeline, stop_lsn, seg_size, end=True),
        "stop_timeline": timeline,
        "backup_label": text_of(answer["labelfile"]),
        "tablespace_map": text_of(answer["spcmapfile"]),
        "backup_label_base64": _b64(answer["labelfile"]),
        "tablespace_map_base64": _b64(answer["spcmapfile"]),
        "stopped_at": _iso(answer["at"]),
        "duration_seconds": duration,
        "archive_wait_notices": [n for n in notices if any(k in n.lower() for k in ARCHIVE_WAIT_NOTICES)],
    }


def check_expected(snapshot: dict, *, system_identifier: Optional[str], timeline: Optional[int]) -> Optional[str]:
    """Why the server no longer matches the standby the files come from, or None when it does."""
    # Both through the one rule: SQL shows the identifier as a signed bigint, pg_controldata and our modules unsigned.
    found_sysid, found_tli = expected_system_identifier(snapshot["system_identifier"], "the server's system identifier"), int(snapshot["timeline"])
    wanted_sysid = expected_system_identifier(system_identifier)
    if wanted_sysid is not None and wanted_sysid != found_sysid:
        return (
            f"the server the backup runs on has system identifier {found_sysid}, but the standby the files were copied from has "
            f"{wanted_sysid}: they are not the same cluster"
        )
    if timeline is not None and int(timeline) != found_tli:
        return (
            f"the server the backup runs on is on timeline {found_tli}, but the standby the files were copied from is on timeline "
            f"{timeline}: the standby is not following this server's history"
        )
    return None
