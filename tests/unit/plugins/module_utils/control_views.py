"""How PostgreSQL's own tools show pg_control, for comparing the parser with them (unit and integration tests)."""

from __future__ import annotations

import datetime
import time

from ansible_collections.pgbackup.lowlevel.plugins.module_utils import pg_control as pgc
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn


def sql_time(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).timestamp())


def normalise_sql(rows: dict) -> dict:
    """The SQL functions' JSON (xid/oid as strings, times as timestamptz text) in sql_view()'s types."""
    out = {}
    for group, row in rows.items():
        values = {}
        for key, value in row.items():
            if key in ("pg_control_last_modified", "checkpoint_time"):
                value = sql_time(value)
            elif isinstance(value, str) and value.isdigit() and key not in ("redo_wal_file",):
                value = int(value)
            values[key] = value
        out[group] = values
    return out


def controldata_view(parsed: pgc.ControlFile) -> dict:
    """What pg_controldata prints for each field (15's wording; times as it prints them with TZ=UTC in the C locale)."""
    on = {True: "on", False: "off"}

    def when(t: int) -> str:
        return time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t))

    return {
        "pg_control version number": str(parsed.pg_control_version),
        "Catalog version number": str(parsed.catalog_version_no),
        "Database system identifier": str(parsed.system_identifier),
        "Database cluster state": parsed.state_name,
        "pg_control last modified": when(parsed.time),
        "Latest checkpoint location": format_lsn(parsed.checkpoint_lsn),
        "Latest checkpoint's REDO location": format_lsn(parsed.redo_lsn),
        "Latest checkpoint's REDO WAL file": parsed.redo_wal_file,
        "Latest checkpoint's TimeLineID": str(parsed.timeline),
        "Latest checkpoint's PrevTimeLineID": str(parsed.prev_timeline),
        "Latest checkpoint's full_page_writes": on[parsed.full_page_writes],
        "Latest checkpoint's NextXID": parsed.next_xid,
        "Latest checkpoint's NextOID": str(parsed.next_oid),
        "Latest checkpoint's NextMultiXactId": str(parsed.next_multi),
        "Latest checkpoint's NextMultiOffset": str(parsed.next_multi_offset),
        "Latest checkpoint's oldestXID": str(parsed.oldest_xid),
        "Latest checkpoint's oldestXID's DB": str(parsed.oldest_xid_db),
        "Latest checkpoint's oldestActiveXID": str(parsed.oldest_active_xid),
        "Latest checkpoint's oldestMultiXid": str(parsed.oldest_multi),
        "Latest checkpoint's oldestMulti's DB": str(parsed.oldest_multi_db),
        "Latest checkpoint's oldestCommitTsXid": str(parsed.oldest_commit_ts_xid),
        "Latest checkpoint's newestCommitTsXid": str(parsed.newest_commit_ts_xid),
        "Time of latest checkpoint": when(parsed.checkpoint_time),
        "Fake LSN counter for unlogged rels": format_lsn(parsed.unlogged_lsn),
        "Minimum recovery ending location": format_lsn(parsed.min_recovery_point),
        "Min recovery ending loc's timeline": str(parsed.min_recovery_point_tli),
        "Backup start location": format_lsn(parsed.backup_start_point),
        "Backup end location": format_lsn(parsed.backup_end_point),
        "End-of-backup record required": "yes" if parsed.backup_end_required else "no",
        "wal_level setting": parsed.wal_level_name,
        "wal_log_hints setting": on[parsed.wal_log_hints],
        "max_connections setting": str(parsed.max_connections),
        "max_worker_processes setting": str(parsed.max_worker_processes),
        "max_wal_senders setting": str(parsed.max_wal_senders),
        "max_prepared_xacts setting": str(parsed.max_prepared_xacts),
        "max_locks_per_xact setting": str(parsed.max_locks_per_xact),
        "track_commit_timestamp setting": on[parsed.track_commit_timestamp],
        "Maximum data alignment": str(parsed.max_align),
        "Database block size": str(parsed.blcksz),
        "Blocks per segment of large relation": str(parsed.relseg_size),
        "WAL block size": str(parsed.xlog_blcksz),
        "Bytes per WAL segment": str(parsed.xlog_seg_size),
        "Maximum length of identifiers": str(parsed.name_data_len),
        "Maximum columns in an index": str(parsed.index_max_keys),
        "Maximum size of a TOAST chunk": str(parsed.toast_max_chunk_size),
        "Size of a large-object chunk": str(parsed.loblksize),
        "Date/time type storage": "64-bit integers",
        "Float8 argument passing": "by value" if parsed.float8_by_val else "by reference",
        "Data page checksum version": str(parsed.data_checksum_version),
        "Mock authentication nonce": parsed.mock_authentication_nonce.hex(),
    }
