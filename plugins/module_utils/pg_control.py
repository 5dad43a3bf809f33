# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read ``global/pg_control`` of PostgreSQL 13-18 (pg_control.h, controldata_utils.c).

Offsets were measured on x86-64 (little-endian, LP64) for each version; the struct is the same
296 bytes in 13-18 except that 18 inserts ``default_char_signedness`` before the nonce, moving the
CRC from offset 288 to 292. 17 also copies ``wal_level`` into the checkpoint (offset 60).
"""

from __future__ import annotations

import struct
import time
from dataclasses import asdict, dataclass

from .crc32c import crc32c
from .errors import PgBackupError
from .lsn import format_lsn

PG_CONTROL_FILE_SIZE = 8192
# Final catalog version of each major: a development or beta build of N+1 lies between N's and N+1's.
_FINAL_CATALOG_VERSION = {13: 202007201, 14: 202107181, 15: 202209061, 16: 202307071, 17: 202406281, 18: 202506291}
_OLDEST_BEFORE_13 = 201909212  # 12's final catalog version
_CONTROL_VERSION = {13: 1300, 14: 1300, 15: 1300, 16: 1300, 17: 1700, 18: 1800}
STATE_NAMES = {
    0: "starting up",
    1: "shut down",
    2: "shut down in recovery",
    3: "shutting down",
    4: "in crash recovery",
    5: "in archive recovery",
    6: "in production",
}
WAL_LEVEL_NAMES = {0: "minimal", 1: "replica", 2: "logical"}

# name: (offset, struct format) for the fields shared by 13-18.
_FIELDS = {
    "system_identifier": (0, "Q"),
    "pg_control_version": (8, "I"),
    "catalog_version_no": (12, "I"),
    "state": (16, "i"),
    "time": (24, "q"),
    "checkpoint_lsn": (32, "Q"),
    "redo_lsn": (40, "Q"),
    "timeline": (48, "I"),
    "prev_timeline": (52, "I"),
    "full_page_writes": (56, "?"),
    "min_recovery_point": (136, "Q"),
    "min_recovery_point_tli": (144, "I"),
    "backup_start_point": (152, "Q"),
    "backup_end_point": (160, "Q"),
    "backup_end_required": (168, "?"),
    "wal_level": (172, "i"),
    "wal_log_hints": (176, "?"),
    "max_connections": (180, "i"),
    "blcksz": (216, "I"),
    "relseg_size": (220, "I"),
    "xlog_blcksz": (224, "I"),
    "xlog_seg_size": (228, "I"),
    "data_checksum_version": (252, "I"),
}
_CRC_OFFSET = {13: 288, 14: 288, 15: 288, 16: 288, 17: 288, 18: 292}
_LSN_FIELDS = ("checkpoint_lsn", "redo_lsn", "min_recovery_point", "backup_start_point", "backup_end_point")


@dataclass(frozen=True)
class ControlFile:
    """The fields of pg_control a backup tool needs, with LSNs as integers."""

    system_identifier: int
    pg_control_version: int
    catalog_version_no: int
    major_version: int
    state: int
    time: int
    checkpoint_lsn: int
    redo_lsn: int
    timeline: int
    prev_timeline: int
    full_page_writes: bool
    min_recovery_point: int
    min_recovery_point_tli: int
    backup_start_point: int
    backup_end_point: int
    backup_end_required: bool
    wal_level: int
    wal_log_hints: bool
    max_connections: int
    blcksz: int
    relseg_size: int
    xlog_blcksz: int
    xlog_seg_size: int
    data_checksum_version: int
    crc: int

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, f"unrecognized status code {self.state}")

    @property
    def wal_level_name(self) -> str:
        return WAL_LEVEL_NAMES.get(self.wal_level, f"unrecognized wal_level {self.wal_level}")

    def as_dict(self) -> dict:
        """Every field, LSNs as PostgreSQL prints them, plus the state and wal_level names."""
        facts = asdict(self)
        for name in _LSN_FIELDS:
            facts[name] = format_lsn(facts[name])
        facts["state_name"] = self.state_name
        facts["wal_level_name"] = self.wal_level_name
        facts["data_checksums"] = self.data_checksum_version != 0
        return facts


def major_version_of(catalog_version_no: int) -> int:
    """The PostgreSQL major a catalog version belongs to, or a clear refusal outside 13-18."""
    if catalog_version_no > _OLDEST_BEFORE_13:
        for major in sorted(_FINAL_CATALOG_VERSION):
            if catalog_version_no <= _FINAL_CATALOG_VERSION[major]:
                return major
    raise PgBackupError(
        f"pg_control has catalog version {catalog_version_no}, which is not PostgreSQL 13 to 18 "
        f"(13 is {_FINAL_CATALOG_VERSION[13]}, 18 is {_FINAL_CATALOG_VERSION[18]}); this collection supports 13 to 18 only"
    )


def parse_control_file(data: bytes, *, source: str = "pg_control") -> ControlFile:
    """Decode and CRC-check the bytes of a pg_control file."""
    if len(data) != PG_CONTROL_FILE_SIZE:
        raise PgBackupError(f"{source} has {len(data)} bytes, expected {PG_CONTROL_FILE_SIZE}: it is truncated or not a pg_control file")
    values = {name: struct.unpack_from("<" + fmt, data, offset)[0] for name, (offset, fmt) in _FIELDS.items()}
    major = major_version_of(values["catalog_version_no"])
    if values["pg_control_version"] != _CONTROL_VERSION[major]:
        raise PgBackupError(
            f"{source} says pg_control version {values['pg_control_version']} with catalog version {values['catalog_version_no']} "
            f"(PostgreSQL {major}), expected {_CONTROL_VERSION[major]}: the file is damaged or from a patched build"
        )
    crc_offset = _CRC_OFFSET[major]
    stored = struct.unpack_from("<I", data, crc_offset)[0]
    computed = crc32c(data[:crc_offset])
    if stored != computed:
        raise PgBackupError(
            f"{source}: calculated CRC checksum {computed:08X} does not match the value stored in the file ({stored:08X}); "
            "the file is corrupt or was read while being written"
        )
    return ControlFile(major_version=major, crc=stored, **values)


def read_control_file(path: str, *, attempts: int = 10, delay: float = 0.01) -> ControlFile:
    """Read and parse pg_control, retrying a read torn by a concurrent write.

    As PostgreSQL's frontend reader does: retry after a bad CRC until the same bad CRC is seen twice
    (a real corruption) or the attempts run out.
    """
    last_failure = None
    for attempt in range(attempts):
        try:
            with open(path, "rb") as handle:
                data = handle.read(PG_CONTROL_FILE_SIZE + 1)
        except OSError as exc:
            raise PgBackupError(f"cannot read {path}: {exc.strerror}; expected a PostgreSQL data directory's global/pg_control") from exc
        try:
            return parse_control_file(data, source=path)
        except PgBackupError as exc:
            if "CRC" not in exc.message or exc.message == last_failure or attempt == attempts - 1:
                raise
            last_failure = exc.message
            time.sleep(delay)
    raise PgBackupError(f"cannot read {path}: no attempt was made")  # attempts < 1
