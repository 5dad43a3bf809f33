# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_label (and .backup history files) of PostgreSQL 13-18, parsed and written byte for byte.

The server reads the label line by line in a fixed order (read_backup_label); we keep the lines as they
came so that ``format()`` gives back exactly the text ``pg_backup_stop`` returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .errors import PgBackupError
from .lsn import parse_lsn
from .wal import parse_wal_file_name, segment_number

_LINE_RE = re.compile(r"\A([A-Z][A-Z ]*[A-Z]): (.*)\Z")
_LOCATION_RE = re.compile(r"\A(\S+) \(file ([0-9A-F]{24})\)\Z")
_KNOWN = (
    "START WAL LOCATION",
    "STOP WAL LOCATION",
    "CHECKPOINT LOCATION",
    "BACKUP METHOD",
    "BACKUP FROM",
    "START TIME",
    "STOP TIME",
    "LABEL",
    "START TIMELINE",
    "STOP TIMELINE",
    "INCREMENTAL FROM LSN",
    "INCREMENTAL FROM TLI",
)
BACKUP_FROM_VALUES = {"primary": "primary", "master": "primary", "standby": "standby"}


@dataclass(frozen=True)
class BackupLabel:
    """A parsed label. ``lines`` keeps every (key, value) in file order for a byte-exact ``format()``."""

    lines: tuple = field(repr=False)
    start_lsn: int
    start_wal_file: str
    checkpoint_lsn: int
    backup_method: Optional[str] = None
    backup_from: Optional[str] = None  # normalised: primary or standby ('master' in 13 means primary)
    start_time: Optional[str] = None
    label: Optional[str] = None
    start_timeline: Optional[int] = None
    stop_lsn: Optional[int] = None
    stop_wal_file: Optional[str] = None
    stop_time: Optional[str] = None
    stop_timeline: Optional[int] = None
    incremental_from_lsn: Optional[int] = None
    incremental_from_tli: Optional[int] = None
    ends_with_newline: bool = True

    @property
    def is_incremental(self) -> bool:
        return self.incremental_from_lsn is not None or self.incremental_from_tli is not None

    def get(self, key: str) -> Optional[str]:
        """The raw text of a line (``'BACKUP FROM'`` -> ``'master'``), or None."""
        for name, value in self.lines:
            if name == key:
                return value
        return None

    def format(self) -> str:
        text = "\n".join(f"{k}: {v}" for k, v in self.lines)
        return text + "\n" if self.ends_with_newline else text


def _location(value: str, key: str) -> tuple[int, str]:
    match = _LOCATION_RE.match(value)
    if match is None:
        raise PgBackupError(f"backup_label line {key!r} is {value!r}: expected 'X/X (file <24 hex digits>)'")
    return parse_lsn(match.group(1), what=f"backup_label {key}"), match.group(2)


def _number(value: str, key: str) -> int:
    if not value.isdigit():
        raise PgBackupError(f"backup_label line {key!r} is {value!r}: expected a decimal timeline ID")
    return int(value)


def parse_backup_label(text: str, *, seg_size: Optional[int] = None, allow_incremental: bool = False) -> BackupLabel:
    """Parse a backup_label (or a .backup history file's text) and check it the way recovery would.

    ``seg_size`` also checks that the START WAL file is the segment holding the start LSN.
    """
    if not isinstance(text, str) or not text.strip():
        raise PgBackupError("backup_label is empty: expected the labelfile text pg_backup_stop returned")
    body = text[:-1] if text.endswith("\n") else text
    lines = []
    for number, raw in enumerate(body.split("\n"), start=1):
        match = _LINE_RE.match(raw)
        if match is None or match.group(1) not in _KNOWN:
            raise PgBackupError(f"backup_label line {number} is {raw!r}: expected 'KEY: value' with a key PostgreSQL writes, such as 'START WAL LOCATION'")
        lines.append((match.group(1), match.group(2)))
    keys = [k for k, _ in lines]
    if keys[:1] != ["START WAL LOCATION"] or "CHECKPOINT LOCATION" not in keys[:3]:
        raise PgBackupError("invalid data in backup_label: the first lines must be START WAL LOCATION and CHECKPOINT LOCATION, as PostgreSQL writes them")
    if len(set(keys)) != len(keys):
        raise PgBackupError(f"backup_label repeats a line ({', '.join(sorted(k for k in set(keys) if keys.count(k) > 1))}); it is not a label PostgreSQL wrote")
    values = dict(lines)
    start_lsn, start_file = _location(values["START WAL LOCATION"], "START WAL LOCATION")
    facts = {
        "start_lsn": start_lsn,
        "start_wal_file": start_file,
        "checkpoint_lsn": parse_lsn(values["CHECKPOINT LOCATION"], what="backup_label CHECKPOINT LOCATION"),
        "backup_method": values.get("BACKUP METHOD"),
        "start_time": values.get("START TIME"),
        "label": values.get("LABEL"),
        "stop_time": values.get("STOP TIME"),
    }
    if "BACKUP FROM" in values:
        if values["BACKUP FROM"] not in BACKUP_FROM_VALUES:
            raise PgBackupError(f"backup_label says BACKUP FROM: {values['BACKUP FROM']!r}, expected primary, master or standby")
        facts["backup_from"] = BACKUP_FROM_VALUES[values["BACKUP FROM"]]
    file_tli = int(start_file[:8], 16)
    if "START TIMELINE" in values:
        facts["start_timeline"] = _number(values["START TIMELINE"], "START TIMELINE")
        if facts["start_timeline"] != file_tli:
            raise PgBackupError(
                f"backup_label says START TIMELINE {facts['start_timeline']} but its start file {start_file} is on timeline {file_tli}; "
                "PostgreSQL refuses such a label"
            )
    else:
        facts["start_timeline"] = file_tli
    if "STOP WAL LOCATION" in values:
        facts["stop_lsn"], facts["stop_wal_file"] = _location(values["STOP WAL LOCATION"], "STOP WAL LOCATION")
    if "STOP TIMELINE" in values:
        facts["stop_timeline"] = _number(values["STOP TIMELINE"], "STOP TIMELINE")
    if "INCREMENTAL FROM LSN" in values:
        facts["incremental_from_lsn"] = parse_lsn(values["INCREMENTAL FROM LSN"], what="backup_label INCREMENTAL FROM LSN")
    if "INCREMENTAL FROM TLI" in values:
        facts["incremental_from_tli"] = _number(values["INCREMENTAL FROM TLI"], "INCREMENTAL FROM TLI")
    result = BackupLabel(lines=tuple(lines), ends_with_newline=text.endswith("\n"), **facts)
    if result.is_incremental and not allow_incremental:
        raise PgBackupError(
            "this backup_label belongs to an incremental backup (INCREMENTAL FROM lines): it is not a data directory PostgreSQL can start; "
            "combine it with its prior backups with pg_combinebackup first"
        )
    if seg_size is not None:
        _, segno = parse_wal_file_name(start_file, seg_size)
        if segno != segment_number(start_lsn, seg_size):
            raise PgBackupError(
                f"backup_label START WAL LOCATION {values['START WAL LOCATION']!r}: the file does not hold that LSN with {seg_size}-byte segments; "
                "the label does not belong to this cluster's segment size"
            )
    return result
