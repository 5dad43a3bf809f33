# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL segment names, segment arithmetic and timeline history (xlog_internal.h, timeline.c).

Never ask the server for file names: ``pg_walfile_name()`` fails on a standby.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PgBackupError
from .lsn import format_lsn, parse_lsn

XLOG_BLCKSZ = 8192
MIN_SEG_SIZE = 1 << 20
MAX_SEG_SIZE = 1 << 30
_NAME_RE = re.compile(r"\A[0-9A-F]{24}\Z")
_HISTORY_RE = re.compile(r"\A([0-9A-F]{8})\.history\Z")


def check_segment_size(size: object) -> int:
    """Return ``size`` if it is a valid wal_segment_size (a power of two from 1 MB to 1 GB)."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SEG_SIZE <= size <= MAX_SEG_SIZE or size & (size - 1):
        raise PgBackupError(f"WAL segment size {size!r} is not valid: expected a power of two from 1 MB to 1 GB in bytes (16777216 by default)")
    return size


def segments_per_xlogid(seg_size: int) -> int:
    """Segments per 4 GB 'xlogid': the middle field of a file name counts these."""
    return (1 << 32) // check_segment_size(seg_size)


def segment_number(lsn: int, seg_size: int) -> int:
    """The segment holding the byte at ``lsn`` (XLByteToSeg)."""
    return lsn // check_segment_size(seg_size)


def end_segment_number(lsn: int, seg_size: int) -> int:
    """The segment holding the last byte before ``lsn`` (XLByteToPrevSeg): the rule for end pointers.

    A stop LSN exactly on a segment boundary needs nothing of the segment that starts there.
    """
    if lsn <= 0:
        raise PgBackupError(f"end LSN {format_lsn(lsn) if lsn == 0 else lsn} has no previous byte; expected an LSN after 0/0")
    return (lsn - 1) // check_segment_size(seg_size)


def wal_file_name(tli: int, segno: int, seg_size: int) -> str:
    """The 24-hex-digit file name of segment ``segno`` on timeline ``tli`` (XLogFileName)."""
    per_id = segments_per_xlogid(seg_size)
    if not 1 <= tli <= 0xFFFFFFFF:
        raise PgBackupError(f"timeline {tli!r} is out of range: expected 1 to 4294967295")
    if not 0 <= segno < (1 << 64) // seg_size:
        raise PgBackupError(f"segment number {segno!r} is out of range for {seg_size}-byte segments")
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_wal_file_name(name: str, seg_size: int) -> tuple[int, int]:
    """Return ``(timeline, segment number)`` of a segment file name.

    PostgreSQL writes uppercase hex only; a lowercase or otherwise different name is not a segment.
    """
    per_id = segments_per_xlogid(seg_size)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PgBackupError(f"{name!r} is not a WAL segment file name: expected 24 uppercase hexadecimal digits such as 000000010000000000000025")
    tli, log, seg = int(name[0:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    if tli == 0:
        raise PgBackupError(f"WAL file name {name!r} has timeline 0, which PostgreSQL never uses")
    if seg >= per_id:
        raise PgBackupError(
            f"WAL file name {name!r} has segment index {seg:08X}, impossible with {seg_size}-byte segments (at most {per_id - 1:08X}): "
            "check the cluster's wal_segment_size"
        )
    return tli, log * per_id + seg


def segment_start_lsn(segno: int, seg_size: int) -> int:
    """The LSN of the first byte of segment ``segno``."""
    return segno * check_segment_size(seg_size)


def history_file_name(tli: int) -> str:
    """The name of timeline ``tli``'s history file (``0000000A.history``)."""
    if not 2 <= tli <= 0xFFFFFFFF:
        raise PgBackupError(f"timeline {tli!r} has no history file: expected 2 to 4294967295 (timeline 1 has none)")
    return f"{tli:08X}.history"


def parse_history_file_name(name: str) -> int:
    """The timeline of a ``XXXXXXXX.history`` file name."""
    match = _HISTORY_RE.match(name or "")
    if match is None:
        raise PgBackupError(f"{name!r} is not a timeline history file name: expected 8 uppercase hex digits and '.history'")
    return int(match.group(1), 16)


@dataclass(frozen=True)
class TimelineHistoryEntry:
    """One line of a history file: ``parent_tli`` was left for the next timeline at ``switchpoint``."""

    parent_tli: int
    switchpoint: int
    reason: str


def parse_history(text: str, tli: int) -> list[TimelineHistoryEntry]:
    """Parse the ``.history`` file of timeline ``tli`` (readTimeLineHistory rules)."""
    entries: list[TimelineHistoryEntry] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = re.split(r"\s+", line, maxsplit=2)
        where = f"line {number} of {history_file_name(tli) if tli >= 2 else 'history file'}"
        if len(fields) < 2 or not fields[0].isdigit():
            raise PgBackupError(f"{where} is {raw!r}: expected 'parentTLI<TAB>X/X<TAB>reason'; the history file is corrupt")
        parent = int(fields[0])
        switchpoint = parse_lsn(fields[1], what=f"switchpoint on {where}")
        if entries and parent <= entries[-1].parent_tli:
            raise PgBackupError(f"{where}: timeline {parent} does not increase after {entries[-1].parent_tli}; timeline IDs must be in increasing sequence")
        if entries and switchpoint < entries[-1].switchpoint:
            raise PgBackupError(f"{where}: switchpoint {fields[1]} is before the previous one {format_lsn(entries[-1].switchpoint)}")
        if parent >= tli:
            raise PgBackupError(f"{where}: parent timeline {parent} is not below the file's own timeline {tli}")
        entries.append(TimelineHistoryEntry(parent, switchpoint, fields[2] if len(fields) > 2 else ""))
    return entries


def timeline_of_lsn(lsn: int, history: list[TimelineHistoryEntry], newest_tli: int) -> int:
    """The timeline an LSN belongs to in the history of ``newest_tli`` (tliOfPointInHistory).

    A parent timeline covers the bytes before its switchpoint; the newest covers the rest.
    """
    for entry in history:
        if lsn < entry.switchpoint:
            return entry.parent_tli
    return newest_tli


def segments_between(start_lsn: int, stop_lsn: int, stop_tli: int, history: list[TimelineHistoryEntry], seg_size: int) -> list[str]:
    """Every segment recovery reads from the segment of ``start_lsn`` to the end segment of ``stop_lsn``.

    For each segment the timeline is the newest one whose first segment is at or below it
    (XLogFileReadAnyTLI), so a segment holding a switchpoint is taken from the new timeline.
    """
    if stop_lsn <= start_lsn:
        raise PgBackupError(f"stop LSN {format_lsn(stop_lsn)} is not after start LSN {format_lsn(start_lsn)}: a backup's WAL range cannot be empty")
    first = segment_number(start_lsn, seg_size)
    last = end_segment_number(stop_lsn, seg_size)
    # Each child timeline begins in the segment of its parent's switchpoint; the oldest begins at 0.
    children = [e.parent_tli for e in history[1:]] + [stop_tli]
    starts = [(history[0].parent_tli if history else stop_tli, 0)]
    starts += [(child, segment_number(e.switchpoint, seg_size)) for e, child in zip(history, children)]
    names = []
    for segno in range(first, last + 1):
        tli = max(t for t, s in starts if s <= segno)
        names.append(wal_file_name(tli, segno, seg_size))
    return names


def history_files_needed(stop_tli: int, history: list[TimelineHistoryEntry]) -> list[str]:
    """History files recovery of a backup on ``stop_tli`` wants: the stop timeline's and its ancestors' (above 1)."""
    tlis = {e.parent_tli for e in history} | {stop_tli}
    return [history_file_name(t) for t in sorted(tlis) if t >= 2]
