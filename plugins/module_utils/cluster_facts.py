# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts of a PostgreSQL 13-18 cluster: from a running server over SQL, or from a data directory's files.

``server_facts(session, warn=...)`` reads a running server; a value the connected role may not read
is returned as ``None`` with a warning (``warn``), never a failure. ``data_dir_facts(path, warn=...)``
reads ``global/pg_control`` and the marker files of a data directory, running or not.

Per-version differences handled here (checked against 13.23, 14.23, 15.18, 16.14, 17.10, 18.4):
``pg_get_wal_replay_pause_state()`` exists from 14 (``pg_is_wal_replay_paused()`` in all);
``archive_library`` from 15, ``summarize_wal`` from 17; ``pg_replication_slots`` gains ``two_phase`` (14),
``conflicting`` (16), ``inactive_since``, ``invalidation_reason``, ``failover``, ``synced`` (17) and
``two_phase_at`` (18). ``pg_stat_replication``, ``pg_stat_wal_receiver`` and the ``pg_control_*()``
functions have the same columns in 13-18.
"""

from __future__ import annotations

import datetime
import decimal
import os
import re
from typing import Any, Callable, Optional

from .backup_label import parse_backup_label
from .connection import Session, run_query
from .errors import PgBackupError
from .lsn import format_lsn
from .pg_control import read_control_file
from .postmaster import postmaster_status

SUPPORTED_MAJORS = range(13, 19)
INSUFFICIENT_PRIVILEGE = "42501"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"  # e.g. "recovery is not in progress" after a promotion

# pg_settings name -> first major that has it. Read from pg_settings, which silently leaves out the
# settings the role may not see (data_directory needs pg_read_all_settings).
SETTINGS = {
    "wal_segment_size": 13,
    "block_size": 13,
    "wal_block_size": 13,
    "full_page_writes": 13,
    "data_checksums": 13,
    "wal_log_hints": 13,
    "wal_level": 13,
    "archive_mode": 13,
    "archive_command": 13,
    "archive_library": 15,
    "archive_timeout": 13,
    "restore_command": 13,
    "hot_standby": 13,
    "data_directory": 13,
    "cluster_name": 13,
    "max_wal_senders": 13,
    "max_replication_slots": 13,
    "wal_keep_size": 13,
    "max_slot_wal_keep_size": 13,
    "primary_slot_name": 13,
    "summarize_wal": 17,
}

# Every column pg_replication_slots has in some supported major, with the first major that has it.
SLOT_COLUMNS = {
    "slot_name": 13,
    "plugin": 13,
    "slot_type": 13,
    "datoid": 13,
    "database": 13,
    "temporary": 13,
    "active": 13,
    "active_pid": 13,
    "xmin": 13,
    "catalog_xmin": 13,
    "restart_lsn": 13,
    "confirmed_flush_lsn": 13,
    "wal_status": 13,
    "safe_wal_size": 13,
    "two_phase": 14,
    "two_phase_at": 18,
    "inactive_since": 17,
    "conflicting": 16,
    "invalidation_reason": 17,
    "failover": 17,
    "synced": 17,
}
_XID_COLUMNS = ("xmin", "catalog_xmin", "backend_xmin")
_UNIT_RE = re.compile(r"\A([0-9]*)(B|kB|MB|GB|TB|us|ms|s|min|h|d)\Z")
_BYTES = {"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}

Warn = Callable[[str], None]


# --- values as Ansible returns them ------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A value the driver returned, as JSON can carry it: numbers, text, ISO 8601 times, seconds for intervals."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _row(row: dict) -> dict:
    facts = jsonable(row)
    for name in _XID_COLUMNS:
        value = facts.get(name)
        if isinstance(value, str) and value.isdigit():
            facts[name] = int(value)
    return facts


def setting_value(setting: Optional[str], unit: Optional[str], vartype: str) -> Any:
    """A pg_settings value typed: booleans, integers (memory in bytes, time in seconds), text as shown."""
    if setting is None:
        return None
    if vartype == "bool":
        return setting == "on"
    if vartype not in ("integer", "real"):
        return setting
    number: Any = int(setting) if vartype == "integer" else float(setting)
    match = _UNIT_RE.match(unit or "")
    if match is None or number < 0:  # unitless, or -1 meaning "unlimited"/"disabled"
        return number
    factor = int(match.group(1) or 1)
    if match.group(2) in _BYTES:
        return number * factor * _BYTES[match.group(2)]
    seconds = number * factor * _SECONDS[match.group(2)]
    return int(seconds) if float(seconds).is_integer() else seconds


def timeline_of_wal_file(name: Optional[str]) -> Optional[int]:
    """The timeline in a WAL file name's first 8 hex digits."""
    if not name or not re.match(r"\A[0-9A-F]{24}\Z", name):
        return None
    return int(name[:8], 16)


# --- a running server ----------------------------------------------------------------------------


class _ServerReader:
    def __init__(self, session: Session, warn: Warn) -> None:
        self.session = session
        self.warn = warn
        self.major = 0

    def rows(self, what: str, sql: str, params: Any = None, *, advice: str = "") -> Optional[list]:
        """The rows of ``sql``, or None with a warning when the role may not read ``what``."""
        try:
            return run_query(self.session, sql, params)
        except PgBackupError as exc:
            sqlstate = exc.details.get("sqlstate")
            if sqlstate == INSUFFICIENT_PRIVILEGE:
                advice = advice or "connect as a superuser or grant the connected role the privilege"
                self.warn(f"cannot read {what}: {exc.details.get('server_message') or exc.message}; returned as null; {advice}")
                return None
            if sqlstate == OBJECT_NOT_IN_PREREQUISITE_STATE:
                raise PgBackupError(
                    f"the server changed its recovery state while its facts were read ({exc.message}); it was probably promoted: run cluster_info again",
                    sqlstate=sqlstate,
                ) from None
            raise

    def row(self, what: str, sql: str, params: Any = None, *, advice: str = "") -> Optional[dict]:
        rows = self.rows(what, sql, params, advice=advice)
        if not rows:
            return None
        return _row(rows[0])


_SETTINGS_ADVICE = "connect as a superuser or GRANT pg_read_all_settings (or pg_monitor, which includes it) to the role"
_STATS_ADVICE = "connect as a superuser or GRANT pg_read_all_stats (or pg_monitor, which includes it) to the role"


def server_facts(session: Session, *, warn: Warn) -> dict:
    """Facts of the server ``session`` is connected to (see the cluster_info module's RETURN)."""
    reader = _ServerReader(session, warn)
    basics = reader.row(
        "the server version",
        "SELECT current_setting('server_version') AS server_version, current_setting('server_version_num')::int AS server_version_num, "
        "pg_is_in_recovery() AS in_recovery",
    )
    if basics is None:
        raise PgBackupError(f"the server at {session.target} returned no row for its version and recovery state")
    major = basics["server_version_num"] // 10000
    reader.major = major
    if major not in SUPPORTED_MAJORS:
        warn(f"the server is PostgreSQL {basics['server_version']}; this collection supports 13 to 18, so some facts may be missing or wrong")
    in_recovery = bool(basics["in_recovery"])
    facts: dict = {
        "source": "server",
        "server_version": basics["server_version"],
        "server_version_num": basics["server_version_num"],
        "major": major,
        "in_recovery": in_recovery,
    }
    facts["role"] = _role(reader)
    facts.update(_control(reader))
    facts.update(_wal_position(reader, in_recovery))
    facts.update(_settings(reader, major))
    facts["tablespaces"] = _tablespaces(reader)
    facts["replication"] = _replication(reader, facts["role"])
    facts["wal_receiver"] = _wal_receiver(reader, facts["role"]) if in_recovery else None
    facts["replication_slots"] = _slots(reader, major)
    facts["received_timeline"] = (facts["wal_receiver"] or {}).get("received_tli")
    facts["timeline"] = _current_timeline(facts)
    return facts


def _role(reader: _ServerReader) -> dict:
    row = reader.row(
        "the connected role's attributes",
        "SELECT current_user AS name, r.rolsuper AS superuser, r.rolreplication AS replication, "
        "pg_has_role('pg_monitor', 'USAGE') AS pg_monitor, pg_has_role('pg_read_all_settings', 'USAGE') AS pg_read_all_settings, "
        "pg_has_role('pg_read_all_stats', 'USAGE') AS pg_read_all_stats "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
    )
    keys = ("name", "superuser", "replication", "pg_monitor", "pg_read_all_settings", "pg_read_all_stats")
    return {key: (row or {}).get(key) for key in keys}


def _control(reader: _ServerReader) -> dict:
    def control(function: str, columns: str) -> Optional[dict]:
        advice = f"PUBLIC may run {function} unless someone revoked it: GRANT EXECUTE ON FUNCTION pg_catalog.{function} TO the role"
        return reader.row(function, f"SELECT {columns} FROM pg_catalog.{function}", advice=advice)  # noqa: S608 - constants only

    system = control("pg_control_system()", "system_identifier, pg_control_version, catalog_version_no, pg_control_last_modified") or {}
    checkpoint = control(
        "pg_control_checkpoint()",
        "checkpoint_lsn::text AS checkpoint_lsn, redo_lsn::text AS redo_lsn, redo_wal_file, timeline_id, prev_timeline_id, full_page_writes, checkpoint_time",
    )
    recovery = control(
        "pg_control_recovery()",
        "min_recovery_end_lsn::text AS min_recovery_end_lsn, min_recovery_end_timeline, backup_start_lsn::text AS backup_start_lsn, "
        "backup_end_lsn::text AS backup_end_lsn, end_of_backup_record_required",
    )
    return {
        "system_identifier": system.get("system_identifier"),
        "pg_control_version": system.get("pg_control_version"),
        "catalog_version_no": system.get("catalog_version_no"),
        "pg_control_last_modified": system.get("pg_control_last_modified"),
        "checkpoint": checkpoint,
        "checkpoint_timeline": (checkpoint or {}).get("timeline_id"),
        "recovery": recovery,
    }


def _wal_position(reader: _ServerReader, in_recovery: bool) -> dict:
    facts = dict.fromkeys(
        (
            "current_lsn",
            "insert_lsn",
            "flush_lsn",
            "current_wal_file",
            "insert_timeline",
            "receive_lsn",
            "replay_lsn",
            "last_replay_timestamp",
            "replay_paused",
            "replay_pause_state",
        )
    )
    if not in_recovery:
        row = reader.row(
            "the current WAL position",
            "SELECT pg_current_wal_lsn()::text AS current_lsn, pg_current_wal_insert_lsn()::text AS insert_lsn, "
            "pg_current_wal_flush_lsn()::text AS flush_lsn, pg_walfile_name(pg_current_wal_lsn()) AS current_wal_file",
        )
        facts.update(row or {})
        facts["insert_timeline"] = timeline_of_wal_file(facts["current_wal_file"])
        return facts
    pause_state = ", pg_get_wal_replay_pause_state() AS replay_pause_state" if reader.major >= 14 else ""
    row = reader.row(
        "the replay position",
        "SELECT pg_last_wal_receive_lsn()::text AS receive_lsn, pg_last_wal_replay_lsn()::text AS replay_lsn, "
        f"pg_last_xact_replay_timestamp() AS last_replay_timestamp, pg_is_wal_replay_paused() AS replay_paused{pause_state}",
    )
    facts.update(row or {})
    return facts


def _settings(reader: _ServerReader, major: int) -> dict:
    names = [name for name, since in SETTINGS.items() if major >= since]
    rows = reader.rows("pg_settings", "SELECT name, setting, unit, vartype FROM pg_catalog.pg_settings WHERE name = ANY(%s)", (names,)) or []
    found = {row["name"]: setting_value(row["setting"], row["unit"], row["vartype"]) for row in rows}
    hidden = [name for name in names if name not in found]
    if hidden and rows:
        reader.warn(f"cannot read the settings {', '.join(hidden)}: the connected role may not see them; returned as null; {_SETTINGS_ADVICE}")
    return {name: found.get(name) for name in SETTINGS}


def _tablespaces(reader: _ServerReader) -> Optional[list]:
    rows = reader.rows(
        "the tablespaces",
        "SELECT spcname AS name, oid::bigint AS oid, pg_catalog.pg_tablespace_location(oid) AS location FROM pg_catalog.pg_tablespace ORDER BY oid",
    )
    if rows is None:
        return None
    return [{"name": r["name"], "oid": int(r["oid"]), "location": r["location"] or None} for r in rows]


def _can_read_stats(role: dict) -> bool:
    return bool(role.get("superuser") or role.get("pg_read_all_stats"))


def _replication(reader: _ServerReader, role: dict) -> Optional[list]:
    rows = reader.rows("pg_stat_replication", "SELECT * FROM pg_catalog.pg_stat_replication ORDER BY pid")
    if rows is None:
        return None
    if rows and not _can_read_stats(role):
        reader.warn(
            f"pg_stat_replication shows only pid, usesysid, usename and application_name to the connected role; the other columns are null; {_STATS_ADVICE}"
        )
    return [_row(r) for r in rows]


def _wal_receiver(reader: _ServerReader, role: dict) -> Optional[dict]:
    row = reader.row("pg_stat_wal_receiver", "SELECT * FROM pg_catalog.pg_stat_wal_receiver")
    if row is not None and not _can_read_stats(role):
        reader.warn(f"pg_stat_wal_receiver shows only pid to the connected role; the other columns are null; {_STATS_ADVICE}")
    return row


def _slots(reader: _ServerReader, major: int) -> Optional[list]:
    rows = reader.rows("pg_replication_slots", "SELECT * FROM pg_catalog.pg_replication_slots ORDER BY slot_name")
    if rows is None:
        return None
    slots = []
    for row in rows:
        facts = _row(row)
        slots.append({name: facts.get(name) for name in SLOT_COLUMNS} | {k: v for k, v in facts.items() if k not in SLOT_COLUMNS})
    return slots


def _current_timeline(facts: dict) -> Optional[int]:
    """The timeline the server is on: where WAL is inserted on a primary; on a standby, the newest it knows."""
    if not facts["in_recovery"]:
        return facts.get("insert_timeline") or facts.get("checkpoint_timeline")
    known = [facts.get("received_timeline"), (facts.get("recovery") or {}).get("min_recovery_end_timeline"), facts.get("checkpoint_timeline")]
    known = [tli for tli in known if isinstance(tli, int) and tli > 0]
    return max(known) if known else None


# --- a data directory --------------------------------------------------------------------------------


def data_dir_facts(data_dir: str, *, warn: Warn) -> dict:
    """Facts of a data directory from its files: pg_control, PG_VERSION, postmaster.pid and the marker files."""
    if not os.path.isdir(data_dir):
        raise PgBackupError(f"data_dir {data_dir} is not a directory (or is not readable by the user the module runs as); expected a PostgreSQL data directory")
    control_path = os.path.join(data_dir, "global", "pg_control")
    if not os.path.exists(control_path):
        raise PgBackupError(f"{data_dir} has no global/pg_control: it is not a PostgreSQL data directory, or a copy whose pg_control was not placed yet")
    control = read_control_file(control_path)
    pg_version = _read_text(os.path.join(data_dir, "PG_VERSION"))
    if pg_version is not None and pg_version != str(control.major_version):
        warn(f"{data_dir}/PG_VERSION says {pg_version} but pg_control is from PostgreSQL {control.major_version}")
    postmaster = postmaster_status(data_dir)
    if postmaster["running"]:
        warn(
            f"a postmaster (PID {postmaster['pid']}) runs on {data_dir}: pg_control on disk shows its last checkpoint or restartpoint, "
            "not its current position; connect to the server for live facts"
        )
    control_facts = jsonable(control.as_dict())
    # The nonce salts SCRAM's answers for roles that do not exist; it is no business of a report.
    control_facts.pop("mock_authentication_nonce", None)
    return {
        "source": "data_dir",
        "data_directory": os.path.realpath(data_dir),
        "pg_version": pg_version,
        "major": control.major_version,
        "system_identifier": control.system_identifier,
        "pg_control_version": control.pg_control_version,
        "catalog_version_no": control.catalog_version_no,
        "state": control.state_name,
        "timeline": control.timeline,
        "checkpoint_timeline": control.timeline,
        "wal_segment_size": control.xlog_seg_size,
        "block_size": control.blcksz,
        "wal_block_size": control.xlog_blcksz,
        "full_page_writes": control.full_page_writes,
        "data_checksums": control.data_checksum_version != 0,
        "wal_log_hints": control.wal_log_hints,
        "wal_level": control.wal_level_name,
        "control": control_facts,
        "running": postmaster["running"],
        "postmaster": postmaster,
        "backup_label": _backup_label(data_dir, control.xlog_seg_size, warn),
        "tablespace_map": os.path.exists(os.path.join(data_dir, "tablespace_map")),
        "standby_signal": os.path.exists(os.path.join(data_dir, "standby.signal")),
        "recovery_signal": os.path.exists(os.path.join(data_dir, "recovery.signal")),
        "tablespaces": _data_dir_tablespaces(data_dir),
    }


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PgBackupError(f"cannot read {path}: {exc.strerror}") from None


def _backup_label(data_dir: str, seg_size: int, warn: Warn) -> Optional[dict]:
    path = os.path.join(data_dir, "backup_label")
    text = _read_text(path)
    if text is None:
        return None
    facts: dict = {"start_lsn": None, "start_wal_file": None, "checkpoint_lsn": None, "start_timeline": None, "backup_from": None, "label": None}
    try:
        label = parse_backup_label(text + "\n", seg_size=seg_size, allow_incremental=True)
    except PgBackupError as exc:
        warn(f"{path} exists but cannot be parsed: {exc.message}")
        return facts
    facts.update(
        start_lsn=format_lsn(label.start_lsn),
        start_wal_file=label.start_wal_file,
        checkpoint_lsn=format_lsn(label.checkpoint_lsn),
        start_timeline=label.start_timeline,
        backup_from=label.backup_from,
        label=label.label,
    )
    return facts


def _data_dir_tablespaces(data_dir: str) -> list:
    directory = os.path.join(data_dir, "pg_tblspc")
    try:
        names = sorted(os.listdir(directory), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PgBackupError(f"cannot list {directory}: {exc.strerror}") from None
    tablespaces = []
    for name in names:
        if not name.isdigit():
            continue
        path = os.path.join(directory, name)
        if os.path.islink(path):
            location = os.readlink(path)
        else:  # an in-place tablespace (allow_in_place_tablespaces, 15+) is a directory
            location = os.path.join("pg_tblspc", name)
        tablespaces.append({"name": None, "oid": int(name), "location": location})
    return tablespaces
