# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_label (and ``.backup`` history files) of PostgreSQL 13-18, parsed and written byte for byte.

What the server writes (``do_pg_start_backup`` in 13-14, ``build_backup_content`` in 15+)::

    START WAL LOCATION: 0/2500028 (file 000000010000000000000025)
    STOP WAL LOCATION: 0/2500138 (file 000000010000000000000025)    <- .backup history files only
    CHECKPOINT LOCATION: 0/2500060
    BACKUP METHOD: streamed            (pg_start_backup for 13-14 exclusive backups, pg_rewind after pg_rewind)
    BACKUP FROM: primary               (standby; 13 writes master)
    START TIME: 2026-11-22 19:45:49 UTC
    LABEL: nightly                     (pg_rewind writes none)
    START TIMELINE: 1
    STOP TIME: 2026-11-22 19:46:02 UTC <- .backup history files only
    STOP TIMELINE: 1                   <- .backup history files only
    INCREMENTAL FROM LSN: 0/2000028    <- 17+, incremental backups of pg_basebackup only
    INCREMENTAL FROM TLI: 1

The server reads it back with ``fscanf`` in that fixed order (``read_backup_label``): the first two lines
are mandatory, the others optional but only recognised in order. We keep the lines exactly as they came,
so ``format()`` gives back the very text ``pg_backup_stop`` returned, and refuse a label the server
would misread: lines out of order or repeated, an unknown line, a missing final newline (a truncated
copy), a START TIMELINE that differs from the start file's timeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn
from .wal import check_segment_size, end_segment_number, parse_wal_file_name, segment_number, wal_file_name

KEY_ORDER = (
    "START WAL LOCATION",
    "STOP WAL LOCATION",
    "CHECKPOINT LOCATION",
    "BACKUP METHOD",
    "BACKUP FROM",
    "START TIME",
    "LABEL",
    "START TIMELINE",
    "STOP TIME",
    "STOP TIMELINE",
    "INCREMENTAL FROM LSN",
    "INCREMENTAL FROM TLI",
)
_RANK = {key: rank for rank, key in enumerate(KEY_ORDER)}
_LINE_RE = re.compile(r"\A([A-Z][A-Z ]*[A-Z]): (.*)\Z")
_LOCATION_RE = re.compile(r"\A([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}) \(file ([0-9A-F]{24})\)\Z")
_TLI_RE = re.compile(r"\A[0-9]{1,10}\Z")
BACKUP_FROM_VALUES = {"primary": "primary", "master": "primary", "standby": "standby"}
BACKUP_METHODS = ("streamed", "pg_start_backup", "pg_rewind")


@dataclass(frozen=True)
class BackupLabel:
    """A parsed label or ``.backup`` history file; ``lines`` keeps every (key, value) in file order."""

    lines: tuple = field(repr=False)
    start_lsn: int
    start_wal_file: str
    checkpoint_lsn: int
    backup_method: Optional[str] = None
    backup_from: Optional[str] = None  # normalised: primary or standby (13's 'master' is primary); raw text in lines
    start_time: Optional[str] = None
    label: Optional[str] = None
    start_timeline: int = 0  # START TIMELINE, or the start file's timeline when the line is absent
    stop_lsn: Optional[int] = None
    stop_wal_file: Optional[str] = None
    stop_time: Optional[str] = None
    stop_timeline: Optional[int] = None
    incremental_from_lsn: Optional[int] = None
    incremental_from_tli: Optional[int] = None

    @property
    def is_incremental(self) -> bool:
        return self.incremental_from_lsn is not None or self.incremental_from_tli is not None

    @property
    def is_history_file(self) -> bool:
        """True for the text of a ``.backup`` history file (it has the STOP lines)."""
        return self.stop_lsn is not None

    @property
    def from_standby(self) -> bool:
        return self.backup_from == "standby"

    @property
    def backup_end_required(self) -> bool:
        """Recovery must reach the end of the backup before it is consistent (``BACKUP METHOD: streamed``)."""
        return self.backup_method == "streamed"

    @property
    def backup_from_raw(self) -> Optional[str]:
        return self.get("BACKUP FROM")

    def get(self, key: str) -> Optional[str]:
        """The raw text of a line (``'BACKUP FROM'`` -> ``'master'``), or None."""
        for name, value in self.lines:
            if name == key:
                return value
        return None

    def format(self) -> str:
        """The label text, byte for byte as it was parsed (or built)."""
        return "".join(f"{key}: {value}\n" for key, value in self.lines)

    def as_dict(self) -> dict:
        """The facts with LSNs as text, for module results."""
        return {
            "start_lsn": format_lsn(self.start_lsn),
            "start_wal_file": self.start_wal_file,
            "checkpoint_lsn": format_lsn(self.checkpoint_lsn),
            "backup_method": self.backup_method,
            "backup_from": self.backup_from,
            "start_time": self.start_time,
            "label": self.label,
            "start_timeline": self.start_timeline,
            "stop_lsn": None if self.stop_lsn is None else format_lsn(self.stop_lsn),
            "stop_wal_file": self.stop_wal_file,
            "stop_time": self.stop_time,
            "stop_timeline": self.stop_timeline,
            "incremental_from_lsn": None if self.incremental_from_lsn is None else format_lsn(self.incremental_from_lsn),
            "incremental_from_tli": self.incremental_from_tli,
        }

    def check_segment_size(self, seg_size: int) -> None:
        """Refuse a label whose WAL file names do not fit its LSNs with ``seg_size``-byte segments."""
        check_segment_size(seg_size)
        segno = parse_wal_file_name(self.start_wal_file, seg_size)[1]
        if segno != segment_number(self.start_lsn, seg_size):
            raise PgBackupError(
                f"backup_label START WAL LOCATION {format_lsn(self.start_lsn)} is not in its file {self.start_wal_file} with {seg_size}-byte segments; "
                f"expected file {wal_file_name(self.start_timeline or 1, segment_number(self.start_lsn, seg_size), seg_size)}: "
                "the label does not belong to a cluster with this wal_segment_size",
                seg_size=seg_size,
            )
        if self.stop_lsn is not None and self.stop_wal_file is not None:
            stop_segno = parse_wal_file_name(self.stop_wal_file, seg_size)[1]
            # 13-15 name the segment of stop-1, 16+ the segment of stop: they differ only on a boundary.
            allowed = {segment_number(self.stop_lsn, seg_size)}
            if self.stop_lsn > 0:
                allowed.add(end_segment_number(self.stop_lsn, seg_size))
            if stop_segno not in allowed:
                raise PgBackupError(
                    f"backup history STOP WAL LOCATION {format_lsn(self.stop_lsn)} is not in its file {self.stop_wal_file} with {seg_size}-byte segments: "
                    "the file does not belong to a cluster with this wal_segment_size",
                    seg_size=seg_size,
                )


def _location(value: str, key: str, number: int) -> tuple[int, str]:
    match = _LOCATION_RE.match(value)
    if match is None:
        raise PgBackupError(
            f"invalid data in backup_label line {number}: {key} is {value!r}, expected 'X/X (file <24 uppercase hex digits>)'",
            line=number,
        )
    lsn = parse_lsn(match.group(1), what=f"backup_label {key}")
    tli = int(match.group(2)[:8], 16)
    if tli == 0:
        raise PgBackupError(f"invalid data in backup_label line {number}: {key} names file {match.group(2)} on timeline 0", line=number)
    return lsn, match.group(2)


def _timeline(value: str, key: str, number: int) -> int:
    if not _TLI_RE.match(value) or not 1 <= int(value) <= 0xFFFFFFFF:
        raise PgBackupError(f"invalid data in backup_label line {number}: {key} is {value!r}, expected a timeline ID from 1 to 4294967295", line=number)
    return int(value)


def parse_backup_label(text: object, *, seg_size: Optional[int] = None, allow_incremental: bool = False) -> BackupLabel:
    """Parse a backup_label (or a .backup history file's text) and check it the way recovery would.

    ``seg_size`` also checks that the WAL file names hold the LSNs next to them. A label of an
    incremental backup (17+) is refused unless ``allow_incremental``: PostgreSQL cannot start from it.
    """
    lines = _label_lines(_label_text(text))
    _check_head([key for key, _value in lines])
    result = BackupLabel(lines=tuple(lines), **_label_facts(lines))
    if result.is_incremental and not allow_incremental:
        raise PgBackupError(
            "this backup_label belongs to an incremental backup (it has INCREMENTAL FROM lines): it is not a data directory PostgreSQL can start "
            "(this is an incremental backup, not a data directory); combine it with its prior backups with pg_combinebackup first"
        )
    if seg_size is not None:
        result.check_segment_size(seg_size)
    return result


def _label_text(text: object) -> str:
    """The label as text, refused when empty or truncated (PostgreSQL ends every line with a newline)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            text = bytes(text).decode("utf-8", "surrogateescape")
    if not isinstance(text, str) or not text:
        raise PgBackupError("backup_label is empty: expected the labelfile text pg_backup_stop returned (it starts with 'START WAL LOCATION: ')")
    if not text.endswith("\n"):
        raise PgBackupError(
            "backup_label does not end with a newline: it is truncated (PostgreSQL ends every line with one); take it again from pg_backup_stop's labelfile"
        )
    return text


def _label_lines(text: str) -> list:
    """(key, value) per line: only keys PostgreSQL writes, each once, in the order it reads them."""
    lines: list[tuple[str, str]] = []
    last_rank = -1
    for number, raw in enumerate(text[:-1].split("\n"), start=1):
        match = _LINE_RE.match(raw)
        if match is None or match.group(1) not in _RANK:
            hint = " (a LABEL containing a newline?)" if lines and lines[-1][0] == "LABEL" else ""
            raise PgBackupError(
                f"invalid data in backup_label line {number}: {raw!r}{hint}; expected 'KEY: value' with a key PostgreSQL writes: " + ", ".join(KEY_ORDER),
                line=number,
            )
        key, value = match.group(1), match.group(2)
        rank = _RANK[key]
        if rank == last_rank:
            raise PgBackupError(f"invalid data in backup_label line {number}: {key} appears twice", line=number)
        if rank < last_rank:
            raise PgBackupError(
                f"invalid data in backup_label line {number}: {key} comes after {lines[-1][0]}; PostgreSQL reads the lines in a fixed order "
                "and would misread this label",
                line=number,
            )
        last_rank = rank
        lines.append((key, value))
    return lines


def _check_head(keys: list) -> None:
    expected_head = (
        ["START WAL LOCATION", "STOP WAL LOCATION", "CHECKPOINT LOCATION"] if "STOP WAL LOCATION" in keys else ["START WAL LOCATION", "CHECKPOINT LOCATION"]
    )
    if keys[: len(expected_head)] != expected_head:
        raise PgBackupError(
            f"invalid data in backup_label: it must start with the lines {', '.join(expected_head)}, found {', '.join(keys[:3])}; "
            "PostgreSQL refuses to start from it"
        )


def _label_facts(lines: list) -> dict:
    """The BackupLabel fields of checked ``lines``, each value checked as recovery reads it."""
    values = dict(lines)
    number_of = {key: number for number, (key, _value) in enumerate(lines, start=1)}
    start_lsn, start_file = _location(values["START WAL LOCATION"], "START WAL LOCATION", 1)
    facts: dict = {
        "start_lsn": start_lsn,
        "start_wal_file": start_file,
        "checkpoint_lsn": parse_lsn(values["CHECKPOINT LOCATION"], what="backup_label CHECKPOINT LOCATION"),
        "start_time": values.get("START TIME"),
        "label": values.get("LABEL"),
        "stop_time": values.get("STOP TIME"),
        "start_timeline": int(start_file[:8], 16),
    }
    facts.update(_method_and_origin(values, number_of))
    if "START TIMELINE" in values:
        start_tli = _timeline(values["START TIMELINE"], "START TIMELINE", number_of["START TIMELINE"])
        if start_tli != facts["start_timeline"]:
            raise PgBackupError(
                f"invalid data in backup_label: START TIMELINE is {start_tli} but the start file {start_file} is on timeline {facts['start_timeline']}; "
                f"PostgreSQL refuses such a label (Timeline ID parsed is {start_tli}, but expected {facts['start_timeline']})"
            )
    facts.update(_stop_facts(values, number_of, start_lsn))
    if "INCREMENTAL FROM LSN" in values:
        facts["incremental_from_lsn"] = parse_lsn(values["INCREMENTAL FROM LSN"], what="backup_label INCREMENTAL FROM LSN")
    if "INCREMENTAL FROM TLI" in values:
        facts["incremental_from_tli"] = _timeline(values["INCREMENTAL FROM TLI"], "INCREMENTAL FROM TLI", number_of["INCREMENTAL FROM TLI"])
    return facts


def _method_and_origin(values: dict, number_of: dict) -> dict:
    facts = {}
    if "BACKUP METHOD" in values:
        if values["BACKUP METHOD"] not in BACKUP_METHODS:
            raise PgBackupError(
                f"invalid data in backup_label line {number_of['BACKUP METHOD']}: BACKUP METHOD is {values['BACKUP METHOD']!r}, "
                f"expected one of {', '.join(BACKUP_METHODS)}"
            )
        facts["backup_method"] = values["BACKUP METHOD"]
    if "BACKUP FROM" in values:
        if values["BACKUP FROM"] not in BACKUP_FROM_VALUES:
            raise PgBackupError(
                f"invalid data in backup_label line {number_of['BACKUP FROM']}: BACKUP FROM is {values['BACKUP FROM']!r}, expected primary, master or standby"
            )
        facts["backup_from"] = BACKUP_FROM_VALUES[values["BACKUP FROM"]]
    return facts


def _stop_facts(values: dict, number_of: dict, start_lsn: int) -> dict:
    """STOP WAL LOCATION and STOP TIMELINE, which only a backup history file (.backup) has."""
    facts: dict = {}
    if "STOP WAL LOCATION" in values:
        facts["stop_lsn"], facts["stop_wal_file"] = _location(values["STOP WAL LOCATION"], "STOP WAL LOCATION", 2)
        if facts["stop_lsn"] < start_lsn:
            raise PgBackupError(
                f"invalid data in backup history file: STOP WAL LOCATION {format_lsn(facts['stop_lsn'])} is before the start {format_lsn(start_lsn)}"
            )
    if "STOP TIMELINE" in values:
        facts["stop_timeline"] = _timeline(values["STOP TIMELINE"], "STOP TIMELINE", number_of["STOP TIMELINE"])
        if facts.get("stop_wal_file") and int(facts["stop_wal_file"][:8], 16) != facts["stop_timeline"]:
            raise PgBackupError(
                f"invalid data in backup history file: STOP TIMELINE is {facts['stop_timeline']} but the stop file {facts['stop_wal_file']} "
                "is on another timeline"
            )
    return facts


def build_backup_label(
    *,
    start_lsn: int,
    start_tli: int,
    checkpoint_lsn: int,
    seg_size: int,
    start_time: str,
    label: Optional[str],
    backup_from: str = "primary",
    backup_method: str = "streamed",
    major_version: int = 15,
    stop_lsn: Optional[int] = None,
    stop_tli: Optional[int] = None,
    stop_time: Optional[str] = None,
    incremental_from_lsn: Optional[int] = None,
    incremental_from_tli: Optional[int] = None,
) -> BackupLabel:
    """The label (or, with the stop fields, the .backup history file) PostgreSQL ``major_version`` writes.

    13 writes ``master`` for a primary; 13-15 name the stop file by the segment of stop-1, 16+ by the
    segment of stop. ``label=None`` leaves the LABEL line out, as pg_rewind does.
    """
    if backup_from not in ("primary", "standby"):
        raise PgBackupError(f"backup_from is {backup_from!r}, expected primary or standby")
    if label is not None and ("\n" in label or "\r" in label):
        raise PgBackupError("a backup label must not contain a line break: recovery reads the label file line by line")
    lines = [("START WAL LOCATION", f"{format_lsn(start_lsn)} (file {wal_file_name(start_tli, segment_number(start_lsn, seg_size), seg_size)})")]
    if stop_lsn is not None:
        if stop_tli is None or stop_time is None:
            raise PgBackupError("a backup history file needs stop_lsn, stop_tli and stop_time together")
        stop_segno = segment_number(stop_lsn, seg_size) if major_version >= 16 else end_segment_number(stop_lsn, seg_size)
        lines.append(("STOP WAL LOCATION", f"{format_lsn(stop_lsn)} (file {wal_file_name(stop_tli, stop_segno, seg_size)})"))
    lines.append(("CHECKPOINT LOCATION", format_lsn(checkpoint_lsn)))
    lines.append(("BACKUP METHOD", backup_method))
    lines.append(("BACKUP FROM", "master" if backup_from == "primary" and major_version <= 13 else backup_from))
    lines.append(("START TIME", start_time))
    if label is not None:
        lines.append(("LABEL", label))
    lines.append(("START TIMELINE", str(start_tli)))
    if stop_lsn is not None:
        lines.append(("STOP TIME", stop_time))
        lines.append(("STOP TIMELINE", str(stop_tli)))
    if incremental_from_lsn is not None:
        lines.append(("INCREMENTAL FROM LSN", format_lsn(incremental_from_lsn)))
        lines.append(("INCREMENTAL FROM TLI", str(incremental_from_tli)))
    return parse_backup_label("".join(f"{k}: {v}\n" for k, v in lines), seg_size=seg_size, allow_incremental=True)
