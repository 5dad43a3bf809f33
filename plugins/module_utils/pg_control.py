# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read ``global/pg_control`` of PostgreSQL 13-18 (``pg_control.h``, ``src/common/controldata_utils.c``).

The file is 8192 bytes; the ``ControlFileData`` struct at its start is 296 bytes in 13-18. The layout
below is the one of little-endian LP64 builds (x86-64, arm64), checked against the headers of each
version and against real files of every version. It is the same in 13-18 except:

* 17 (``PG_CONTROL_VERSION`` 1700) also stores ``wal_level`` in the checkpoint copy, at offset 60,
  which was padding before;
* 18 (1800) inserts ``default_char_signedness`` at offset 256, which moves the nonce to 257 and the
  CRC from offset 288 to 292.

The CRC is CRC-32C over every byte before it. Big-endian and 32-bit builds are refused.
"""

from __future__ import annotations

import datetime
import os
import struct
import time as _time
from dataclasses import asdict, dataclass, field
from typing import Optional

from .crc32c import crc32c
from .errors import PgBackupError
from .lsn import format_lsn
from .wal import wal_file_name

PG_CONTROL_FILE_SIZE = 8192
FLOATFORMAT_VALUE = 1234567.0
# Catalog version of each major's release (catversion.h; fixed within a major). A development or beta
# build of N+1 lies between N's and N+1's and is taken as N+1.
CATALOG_VERSION = {13: 202007201, 14: 202107181, 15: 202209061, 16: 202307071, 17: 202406281, 18: 202506291}
_LAST_BEFORE_13 = 201909212  # 12's catalog version
CONTROL_VERSION = {13: 1300, 14: 1300, 15: 1300, 16: 1300, 17: 1700, 18: 1800}
_CRC_OFFSET = {1300: 288, 1700: 288, 1800: 292}

DB_STARTUP = 0
DB_SHUTDOWNED = 1
DB_SHUTDOWNED_IN_RECOVERY = 2
DB_SHUTDOWNING = 3
DB_IN_CRASH_RECOVERY = 4
DB_IN_ARCHIVE_RECOVERY = 5
DB_IN_PRODUCTION = 6
# pg_controldata's wording (dbState()).
STATE_NAMES = {
    DB_STARTUP: "starting up",
    DB_SHUTDOWNED: "shut down",
    DB_SHUTDOWNED_IN_RECOVERY: "shut down in recovery",
    DB_SHUTDOWNING: "shutting down",
    DB_IN_CRASH_RECOVERY: "in crash recovery",
    DB_IN_ARCHIVE_RECOVERY: "in archive recovery",
    DB_IN_PRODUCTION: "in production",
}
WAL_LEVEL_NAMES = {0: "minimal", 1: "replica", 2: "logical"}

# name: (offset, struct format), little-endian, for every version 13-18.
_FIELDS = {
    "system_identifier": (0, "Q"),
    "pg_control_version": (8, "I"),
    "catalog_version_no": (12, "I"),
    "state": (16, "i"),
    "time": (24, "q"),
    "checkpoint_lsn": (32, "Q"),
    # checkPointCopy (CheckPoint) starts at 40
    "redo_lsn": (40, "Q"),
    "timeline": (48, "I"),
    "prev_timeline": (52, "I"),
    "full_page_writes": (56, "?"),
    "next_full_xid": (64, "Q"),
    "next_oid": (72, "I"),
    "next_multi": (76, "I"),
    "next_multi_offset": (80, "I"),
    "oldest_xid": (84, "I"),
    "oldest_xid_db": (88, "I"),
    "oldest_multi": (92, "I"),
    "oldest_multi_db": (96, "I"),
    "checkpoint_time": (104, "q"),
    "oldest_commit_ts_xid": (112, "I"),
    "newest_commit_ts_xid": (116, "I"),
    "oldest_active_xid": (120, "I"),
    # end of checkPointCopy
    "unlogged_lsn": (128, "Q"),
    "min_recovery_point": (136, "Q"),
    "min_recovery_point_tli": (144, "I"),
    "backup_start_point": (152, "Q"),
    "backup_end_point": (160, "Q"),
    "backup_end_required": (168, "?"),
    "wal_level": (172, "i"),
    "wal_log_hints": (176, "?"),
    "max_connections": (180, "i"),
    "max_worker_processes": (184, "i"),
    "max_wal_senders": (188, "i"),
    "max_prepared_xacts": (192, "i"),
    "max_locks_per_xact": (196, "i"),
    "track_commit_timestamp": (200, "?"),
    "max_align": (204, "I"),
    "float_format": (208, "d"),
    "blcksz": (216, "I"),
    "relseg_size": (220, "I"),
    "xlog_blcksz": (224, "I"),
    "xlog_seg_size": (228, "I"),
    "name_data_len": (232, "I"),
    "index_max_keys": (236, "I"),
    "toast_max_chunk_size": (240, "I"),
    "loblksize": (244, "I"),
    "float8_by_val": (248, "?"),
    "data_checksum_version": (252, "I"),
}
_LSN_FIELDS = ("checkpoint_lsn", "redo_lsn", "unlogged_lsn", "min_recovery_point", "backup_start_point", "backup_end_point")


@dataclass(frozen=True)
class ControlFile:
    """The decoded ``ControlFileData``; LSNs are integers (``as_dict()`` gives them as text)."""

    system_identifier: int
    pg_control_version: int
    catalog_version_no: int
    major_version: int
    state: int
    time: int  # pg_control last modified, Unix time
    checkpoint_lsn: int
    redo_lsn: int
    timeline: int
    prev_timeline: int
    full_page_writes: bool
    next_full_xid: int  # epoch << 32 | xid
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    checkpoint_time: int
    oldest_commit_ts_xid: int
    newest_commit_ts_xid: int
    oldest_active_xid: int
    unlogged_lsn: int
    min_recovery_point: int
    min_recovery_point_tli: int
    backup_start_point: int
    backup_end_point: int
    backup_end_required: bool
    wal_level: int
    wal_log_hints: bool
    max_connections: int
    max_worker_processes: int
    max_wal_senders: int
    max_prepared_xacts: int
    max_locks_per_xact: int
    track_commit_timestamp: bool
    max_align: int
    float_format: float
    blcksz: int
    relseg_size: int
    xlog_blcksz: int
    xlog_seg_size: int
    name_data_len: int
    index_max_keys: int
    toast_max_chunk_size: int
    loblksize: int
    float8_by_val: bool
    data_checksum_version: int
    mock_authentication_nonce: bytes = field(repr=False)
    crc: int
    checkpoint_wal_level: Optional[int] = None  # 17+: wal_level in the checkpoint copy
    default_char_signedness: Optional[bool] = None  # 18+

    @property
    def state_name(self) -> str:
        """The state as pg_controldata prints it (``in production``, ``shut down in recovery``...)."""
        return STATE_NAMES.get(self.state, f"unrecognized status code {self.state}")

    @property
    def wal_level_name(self) -> str:
        return WAL_LEVEL_NAMES.get(self.wal_level, f"unrecognized wal_level {self.wal_level}")

    @property
    def data_checksums(self) -> bool:
        return self.data_checksum_version != 0

    @property
    def next_xid(self) -> str:
        """The next transaction ID as ``pg_control_checkpoint()`` shows it: ``epoch:xid``."""
        return f"{self.next_full_xid >> 32}:{self.next_full_xid & 0xFFFFFFFF}"

    @property
    def redo_wal_file(self) -> str:
        """The segment holding the checkpoint's redo point, on the checkpoint's timeline (``redo_wal_file``)."""
        return wal_file_name(self.timeline, self.redo_lsn // self.xlog_seg_size, self.xlog_seg_size)

    @property
    def in_recovery(self) -> bool:
        """The cluster was (or is) a standby or a backup being recovered: states 2 and 5.

        These are the only states a standby's pg_control may be in for a backup taken from a standby
        to be usable (``backup_label contains data inconsistent with control file`` otherwise).
        """
        return self.state in (DB_SHUTDOWNED_IN_RECOVERY, DB_IN_ARCHIVE_RECOVERY)

    def sql_view(self) -> dict:
        """The columns of ``pg_control_system()``, ``pg_control_checkpoint()``, ``pg_control_recovery()`` and
        ``pg_control_init()`` (``pg_controldata.c``), keyed ``system``/``checkpoint``/``recovery``/``init``.

        LSNs are text, times are Unix times (the functions return timestamptz), other values are
        numbers or booleans (the functions return xid and oid columns as those types).
        """
        return {"system": self._system_view(), "checkpoint": self._checkpoint_view(), "recovery": self._recovery_view(), "init": self._init_view()}

    def _system_view(self) -> dict:
        return {
            "pg_control_version": self.pg_control_version,
            "catalog_version_no": self.catalog_version_no,
            "system_identifier": self.system_identifier,
            "pg_control_last_modified": self.time,
        }

    def _checkpoint_view(self) -> dict:
        return {
            "checkpoint_lsn": format_lsn(self.checkpoint_lsn),
            "redo_lsn": format_lsn(self.redo_lsn),
            "redo_wal_file": self.redo_wal_file,
            "timeline_id": self.timeline,
            "prev_timeline_id": self.prev_timeline,
            "full_page_writes": self.full_page_writes,
            "next_xid": self.next_xid,
            "next_oid": self.next_oid,
            "next_multixact_id": self.next_multi,
            "next_multi_offset": self.next_multi_offset,
            "oldest_xid": self.oldest_xid,
            "oldest_xid_dbid": self.oldest_xid_db,
            "oldest_active_xid": self.oldest_active_xid,
            "oldest_multi_xid": self.oldest_multi,
            "oldest_multi_dbid": self.oldest_multi_db,
            "oldest_commit_ts_xid": self.oldest_commit_ts_xid,
            "newest_commit_ts_xid": self.newest_commit_ts_xid,
            "checkpoint_time": self.checkpoint_time,
        }

    def _recovery_view(self) -> dict:
        return {
            "min_recovery_end_lsn": format_lsn(self.min_recovery_point),
            "min_recovery_end_timeline": self.min_recovery_point_tli,
            "backup_start_lsn": format_lsn(self.backup_start_point),
            "backup_end_lsn": format_lsn(self.backup_end_point),
            "end_of_backup_record_required": self.backup_end_required,
        }

    def _init_view(self) -> dict:
        init = {
            "max_data_alignment": self.max_align,
            "database_block_size": self.blcksz,
            "blocks_per_segment": self.relseg_size,
            "wal_block_size": self.xlog_blcksz,
            "bytes_per_wal_segment": self.xlog_seg_size,
            "max_identifier_length": self.name_data_len,
            "max_index_columns": self.index_max_keys,
            "max_toast_chunk_size": self.toast_max_chunk_size,
            "large_object_chunk_size": self.loblksize,
            "float8_pass_by_value": self.float8_by_val,
            "data_page_checksum_version": self.data_checksum_version,
        }
        if self.default_char_signedness is not None:
            init["default_char_signedness"] = self.default_char_signedness  # 18 and later
        return init

    def as_dict(self) -> dict:
        """Every field, LSNs as PostgreSQL prints them, the nonce in hex, plus derived names."""
        facts = asdict(self)
        for name in _LSN_FIELDS:
            facts[name] = format_lsn(facts[name])
        facts["mock_authentication_nonce"] = self.mock_authentication_nonce.hex()
        facts["state_name"] = self.state_name
        facts["wal_level_name"] = self.wal_level_name
        facts["data_checksums"] = self.data_checksums
        facts["next_xid"] = self.next_xid
        facts["redo_wal_file"] = self.redo_wal_file
        facts["time_utc"] = _iso(self.time)
        facts["checkpoint_time_utc"] = _iso(self.checkpoint_time)
        return facts


def _iso(unix_time: int) -> Optional[str]:
    try:
        return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def major_version_of(catalog_version_no: int) -> int:
    """The PostgreSQL major a catalog version belongs to, or a clear refusal outside 13-18."""
    if catalog_version_no > _LAST_BEFORE_13:
        for major in sorted(CATALOG_VERSION):
            if catalog_version_no <= CATALOG_VERSION[major]:
                return major
    raise PgBackupError(
        f"pg_control has catalog version {catalog_version_no}, which is not PostgreSQL 13 to 18 "
        f"(13 is {CATALOG_VERSION[13]}, 18 is {CATALOG_VERSION[18]}); this collection supports PostgreSQL 13 to 18 only",
        catalog_version_no=catalog_version_no,
    )


def _layout_version(data: bytes, source: str) -> int:
    """The pg_control_version, refusing unknown and byte-swapped files before anything else is trusted."""
    version = struct.unpack_from("<I", data, 8)[0]
    if version in _CRC_OFFSET:
        return version
    swapped = struct.unpack_from(">I", data, 8)[0]
    if swapped in _CRC_OFFSET:
        raise PgBackupError(
            f"{source} was written by a big-endian server (pg_control version {swapped} in big-endian byte order): "
            "only little-endian clusters (x86-64, arm64) are supported"
        )
    raise PgBackupError(
        f"{source} has pg_control version {version}, expected 1300 (PostgreSQL 13-16), 1700 (17) or 1800 (18): "
        "it is not a pg_control file of a supported version, or it is damaged",
        pg_control_version=version,
    )


def _crc(data: bytes, version: int) -> tuple[int, int]:
    """(computed, stored) CRC of pg_control bytes of layout ``version``."""
    offset = _CRC_OFFSET[version]
    return crc32c(bytes(data[:offset])), struct.unpack_from("<I", data, offset)[0]


def _check_size(data: bytes, source: str) -> None:
    if len(data) != PG_CONTROL_FILE_SIZE:
        raise PgBackupError(
            f"{source} has {len(data)} bytes, expected {PG_CONTROL_FILE_SIZE}: it is truncated, padded or not a pg_control file",
            size=len(data),
        )


def parse_control_file(data: bytes, *, source: str = "pg_control") -> ControlFile:
    """Decode and CRC-check the bytes of a pg_control file (all 8192 of them)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PgBackupError(f"{source}: expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    _check_size(data, source)
    version = _layout_version(data, source)
    computed, stored = _crc(data, version)
    if computed != stored:
        raise PgBackupError(
            f"{source}: calculated CRC checksum {computed:08X} does not match the value stored in the file ({stored:08X}); "
            "the file is corrupt, was copied while being written, or comes from a build with another layout; "
            "copy it again (it must be copied after every data file) or check the source",
            calculated_crc=f"{computed:08X}",
            stored_crc=f"{stored:08X}",
        )
    values = {name: struct.unpack_from("<" + fmt, data, offset)[0] for name, (offset, fmt) in _FIELDS.items()}
    major = major_version_of(values["catalog_version_no"])
    if CONTROL_VERSION[major] != version:
        raise PgBackupError(
            f"{source} says pg_control version {version} with catalog version {values['catalog_version_no']} (PostgreSQL {major}), "
            f"expected pg_control version {CONTROL_VERSION[major]}: the file comes from a patched or development build",
        )
    if values["float_format"] != FLOATFORMAT_VALUE or values["max_align"] not in (4, 8):
        raise PgBackupError(
            f"{source}: the hardware check values are wrong (floatFormat {values['float_format']!r}, maxAlign {values['max_align']}): "
            "the file was written by a build with another layout (32-bit?), which is not supported"
        )
    if version == 1800:
        values["default_char_signedness"] = struct.unpack_from("<?", data, 256)[0]
        values["mock_authentication_nonce"] = data[257:289]
    else:
        values["mock_authentication_nonce"] = data[256:288]
    if version >= 1700:
        values["checkpoint_wal_level"] = struct.unpack_from("<i", data, 60)[0]
    return ControlFile(major_version=major, crc=stored, **values)


def control_file_path(path: str) -> str:
    """``path`` itself, or ``<path>/global/pg_control`` when ``path`` is a data directory."""
    path = os.fspath(path)
    return os.path.join(path, "global", "pg_control") if os.path.isdir(path) else path


def read_control_file(path: str, *, attempts: int = 10, delay: float = 0.01) -> ControlFile:
    """Read and parse pg_control (a file path, or a data directory), retrying a read torn by a concurrent write.

    As PostgreSQL's frontend reader does (``get_controlfile``, 16+): after a CRC mismatch, read again
    after ``delay`` seconds, up to ``attempts`` more times, and stop early once the same wrong CRC is
    computed twice in a row (then the file is really damaged, not being written).
    """
    path = control_file_path(path)
    last_bad: Optional[int] = None
    retries = 0
    while True:
        try:
            with open(path, "rb") as handle:
                data = handle.read(PG_CONTROL_FILE_SIZE + 1)
        except OSError as exc:
            raise PgBackupError(f"cannot read {path}: {exc.strerror}; expected a PostgreSQL data directory's global/pg_control", path=path) from exc
        if len(data) == PG_CONTROL_FILE_SIZE:
            version = _layout_version(data, path)
            computed, stored = _crc(data, version)
            if computed != stored and retries < attempts and computed != last_bad:
                last_bad = computed
                retries += 1
                _time.sleep(delay)
                continue
        return parse_control_file(data, source=path)


# A checkpoint location no cluster can have: initdb starts WAL in the second segment, so an LSN in the first one
# (0/DEAD, as pgBackRest uses since 2.51) never holds a checkpoint. With backup_label present, recovery takes the
# checkpoint from the label and never looks at this field; without it, startup fails instead of running crash
# recovery from the wrong checkpoint.
GUARD_CHECKPOINT_LSN = 0xDEAD


def guard_control_bytes(data: bytes, *, source: str = "pg_control") -> bytes:
    """The bytes of pg_control with the checkpoint location set to GUARD_CHECKPOINT_LSN and the CRC rewritten."""
    parse_control_file(data, source=source)  # only a valid file is changed
    version = _layout_version(data, source)
    guarded = bytearray(data)
    struct.pack_into("<Q", guarded, _FIELDS["checkpoint_lsn"][0], GUARD_CHECKPOINT_LSN)
    offset = _CRC_OFFSET[version]
    struct.pack_into("<I", guarded, offset, crc32c(bytes(guarded[:offset])))
    return bytes(guarded)


def is_guarded(control: ControlFile) -> bool:
    return control.checkpoint_lsn == GUARD_CHECKPOINT_LSN
