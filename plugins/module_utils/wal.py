# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL segment names, segment arithmetic and timeline history (xlog_internal.h, timeline.c).

Never ask the server for file names: ``pg_walfile_name()`` fails on a standby. Everything here is
computed from LSNs, the timeline and the cluster's ``wal_segment_size``.

File names are accepted exactly as PostgreSQL writes and looks for them: 24 *uppercase* hex digits
(``IsXLogFileName`` uses ``strspn(name, "0123456789ABCDEF")``), so a lowercase name is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import PgBackupError
from .lsn import check_lsn, format_lsn, parse_lsn

XLOG_BLCKSZ = 8192
MIN_SEG_SIZE = 1 << 20
MAX_SEG_SIZE = 1 << 30
DEFAULT_SEG_SIZE = 16 << 20
TLI_MAX = 0xFFFFFFFF
_NAME_RE = re.compile(r"\A[0-9A-F]{24}\Z")
_HISTORY_RE = re.compile(r"\A([0-9A-F]{8})\.history\Z")
_BACKUP_RE = re.compile(r"\A([0-9A-F]{24})\.([0-9A-F]{8})\.backup\Z")
_PARTIAL_RE = re.compile(r"\A([0-9A-F]{24})\.partial\Z")
# sscanf("%u\t%X/%X") in readTimeLineHistory: any whitespace separates, the reason is the rest of the line.
_HISTORY_LINE_RE = re.compile(r"\A[ \t]*([0-9]+)[ \t]+([0-9A-Fa-f]+/[0-9A-Fa-f]+)(?:[ \t]+(.*?))?[ \t\r]*\Z")


def check_segment_size(size: object) -> int:
    """Return ``size`` if it is a valid wal_segment_size in bytes (``IsValidWalSegSize``: a power of two from 1 MB to 1 GB)."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SEG_SIZE <= size <= MAX_SEG_SIZE or size & (size - 1):
        raise PgBackupError(
            f"WAL segment size {size!r} is not valid: expected a power of two from 1 MB to 1 GB in bytes "
            "(16777216 by default; see pg_controldata's 'Bytes per WAL segment' or SHOW wal_segment_size)"
        )
    return size


def check_timeline(tli: object, what: str = "timeline") -> int:
    """Return ``tli`` if it is a valid timeline ID (1 to 2^32-1)."""
    if isinstance(tli, bool) or not isinstance(tli, int) or not 1 <= tli <= TLI_MAX:
        raise PgBackupError(f"{what} {tli!r} is out of range: expected an integer from 1 to 4294967295")
    return tli


def segments_per_xlogid(seg_size: int) -> int:
    """Segments per 4 GB 'xlogid' (``XLogSegmentsPerXLogId``): the middle field of a file name counts these."""
    return (1 << 32) // check_segment_size(seg_size)


def segment_number(lsn: int, seg_size: int) -> int:
    """The segment holding the byte at ``lsn`` (``XLByteToSeg``): use it for start pointers."""
    return check_lsn(lsn) // check_segment_size(seg_size)


def end_segment_number(lsn: int, seg_size: int) -> int:
    """The segment holding the last byte before ``lsn`` (``XLByteToPrevSeg``): the rule for end pointers.

    A stop LSN exactly on a segment boundary needs nothing of the segment that starts there.
    """
    check_lsn(lsn)
    if lsn == 0:
        raise PgBackupError("end LSN 0/0 has no byte before it: expected an end pointer after 0/0")
    return (lsn - 1) // check_segment_size(seg_size)


def segment_start_lsn(segno: int, seg_size: int) -> int:
    """The LSN of the first byte of segment ``segno`` (``XLogSegNoOffsetToRecPtr`` with offset 0)."""
    _check_segno(segno, seg_size)
    return segno * seg_size


def segment_offset(lsn: int, seg_size: int) -> int:
    """The byte offset of ``lsn`` inside its segment (``XLogSegmentOffset``)."""
    return check_lsn(lsn) & (check_segment_size(seg_size) - 1)


def _check_segno(segno: object, seg_size: int) -> int:
    limit = (1 << 64) // check_segment_size(seg_size)
    if isinstance(segno, bool) or not isinstance(segno, int) or not 0 <= segno < limit:
        raise PgBackupError(f"segment number {segno!r} is out of range for {seg_size}-byte segments: expected 0 to {limit - 1}")
    return segno


def wal_file_name(tli: int, segno: int, seg_size: int) -> str:
    """The 24-hex-digit file name of segment ``segno`` on timeline ``tli`` (``XLogFileName``)."""
    check_timeline(tli)
    per_id = segments_per_xlogid(seg_size)
    _check_segno(segno, seg_size)
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def wal_file_name_of_lsn(tli: int, lsn: int, seg_size: int, *, end: bool = False) -> str:
    """The file name holding ``lsn``; with ``end=True`` the one holding the byte before it (for stop LSNs)."""
    segno = end_segment_number(lsn, seg_size) if end else segment_number(lsn, seg_size)
    return wal_file_name(tli, segno, seg_size)


def parse_wal_file_name(name: object, seg_size: int) -> tuple[int, int]:
    """Return ``(timeline, segment number)`` of a WAL segment file name.

    Refuses anything but 24 uppercase hex digits (a ``.partial`` suffix included: see
    ``parse_wal_file_name_any``), timeline 0, and a segment index the segment size cannot have
    (``00000001000000000000FFFF`` is not a 16 MB segment: only 256 fit in 4 GB).
    """
    per_id = segments_per_xlogid(seg_size)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PgBackupError(
            f"{name!r} is not a WAL segment file name: expected 24 uppercase hexadecimal digits such as 000000010000000000000025",
            file_name=repr(name),
        )
    tli, log, seg = int(name[0:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    if tli == 0:
        raise PgBackupError(f"WAL file name {name} has timeline 0, which PostgreSQL never uses: the name is not a WAL segment", file_name=name)
    if seg >= per_id:
        raise PgBackupError(
            f"WAL file name {name} has segment index {seg:08X}, impossible with {seg_size}-byte segments (at most {per_id - 1:08X}): "
            "check the cluster's wal_segment_size",
            file_name=name,
        )
    return tli, log * per_id + seg


def classify_wal_file(name: str) -> Optional[str]:
    """What kind of file in pg_wal or an archive ``name`` is: ``segment``, ``partial``, ``history``, ``backup`` or None."""
    if not isinstance(name, str):
        return None
    if _NAME_RE.match(name):
        return "segment"
    if _PARTIAL_RE.match(name):
        return "partial"
    if _HISTORY_RE.match(name):
        return "history"
    if _BACKUP_RE.match(name):
        return "backup"
    return None


def history_file_name(tli: int) -> str:
    """The name of timeline ``tli``'s history file (``TLHistoryFileName``, ``0000000A.history``)."""
    if isinstance(tli, bool) or not isinstance(tli, int) or not 2 <= tli <= TLI_MAX:
        raise PgBackupError(f"timeline {tli!r} has no history file: expected 2 to 4294967295 (timeline 1 has none)")
    return f"{tli:08X}.history"


def parse_history_file_name(name: object) -> int:
    """The timeline of a history file name such as ``0000000A.history``."""
    match = _HISTORY_RE.match(name) if isinstance(name, str) else None
    if match is None or int(match.group(1), 16) < 2:
        raise PgBackupError(f"{name!r} is not a timeline history file name: expected 8 uppercase hex digits of a timeline from 2 up and '.history'")
    return int(match.group(1), 16)


def backup_history_file_name(stop_tli: int, start_lsn: int, seg_size: int) -> str:
    """The ``.backup`` history file a primary writes at stop (``BackupHistoryFileName``).

    Named by the *stop* timeline, the start segment and the start LSN's offset inside it.
    """
    segno = segment_number(start_lsn, seg_size)
    return f"{wal_file_name(stop_tli, segno, seg_size)}.{segment_offset(start_lsn, seg_size):08X}.backup"


def parse_backup_history_file_name(name: object, seg_size: int) -> tuple[int, int]:
    """Return ``(stop timeline, start LSN)`` of a ``.backup`` history file name."""
    match = _BACKUP_RE.match(name) if isinstance(name, str) else None
    if match is None:
        raise PgBackupError(f"{name!r} is not a backup history file name: expected <24 hex digits>.<8 hex digits>.backup")
    tli, segno = parse_wal_file_name(match.group(1), seg_size)
    offset = int(match.group(2), 16)
    if offset >= seg_size:
        raise PgBackupError(f"backup history file name {name} has offset {offset:08X}, beyond a {seg_size}-byte segment")
    return tli, segno * seg_size + offset


@dataclass(frozen=True)
class TimelineHistoryEntry:
    """One line of a history file: timeline ``parent_tli`` was left for the next one at ``switchpoint``.

    ``parent_tli`` covers the WAL from the previous line's switchpoint (or the beginning) up to,
    not including, ``switchpoint``.
    """

    parent_tli: int
    switchpoint: int
    reason: str = ""


def parse_history(text: str, tli: int) -> list[TimelineHistoryEntry]:
    """Parse the ``.history`` file of timeline ``tli`` (``readTimeLineHistory`` rules), oldest entry first.

    Blank lines and lines starting with ``#`` are skipped. Timeline IDs must increase and stay
    below ``tli``. We are stricter than PostgreSQL in two ways that no real file violates: a
    parent timeline 0 and a switchpoint before the previous one are refused too.
    """
    check_timeline(tli)
    if not isinstance(text, str):
        raise PgBackupError(f"timeline history must be text, got {type(text).__name__}")
    where_file = history_file_name(tli) if tli >= 2 else "history file of timeline 1"
    entries: list[TimelineHistoryEntry] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"line {number} of {where_file} ({raw!r})"
        match = _HISTORY_LINE_RE.match(raw)
        if match is None:
            raise PgBackupError(
                f"syntax error on {where}: expected '<parent timeline><TAB><switchpoint X/X><TAB><reason>'; the history file is damaged",
                line=number,
            )
        parent = int(match.group(1))
        switchpoint = parse_lsn(match.group(2), what=f"switchpoint on {where}")
        if not 1 <= parent <= TLI_MAX:
            raise PgBackupError(f"invalid data on {where}: parent timeline {parent} is not between 1 and 4294967295", line=number)
        if entries and parent <= entries[-1].parent_tli:
            raise PgBackupError(
                f"invalid data on {where}: timeline {parent} does not come after {entries[-1].parent_tli}; timeline IDs must be in increasing sequence",
                line=number,
            )
        if entries and switchpoint < entries[-1].switchpoint:
            raise PgBackupError(
                f"invalid data on {where}: switchpoint {format_lsn(switchpoint)} is before the previous one {format_lsn(entries[-1].switchpoint)}",
                line=number,
            )
        if parent >= tli:
            raise PgBackupError(
                f"invalid data on {where}: parent timeline {parent} is not below the file's own timeline {tli}; "
                "timeline IDs must be less than the child timeline's ID",
                line=number,
            )
        entries.append(TimelineHistoryEntry(parent, switchpoint, match.group(3) or ""))
    return entries


def format_history(entries: list[TimelineHistoryEntry]) -> str:
    """History file text for ``entries`` in PostgreSQL's line format (``%u\\t%X/%X\\t%s\\n``)."""
    return "".join(f"{e.parent_tli}\t{format_lsn(e.switchpoint)}\t{e.reason}\n" for e in entries)


def _check_history(history: list[TimelineHistoryEntry], newest_tli: int) -> None:
    check_timeline(newest_tli, "newest timeline")
    previous = None
    for entry in history:
        if not isinstance(entry, TimelineHistoryEntry):
            raise PgBackupError(f"timeline history entry {entry!r} is not a TimelineHistoryEntry (use parse_history)")
        if previous is not None and (entry.parent_tli <= previous.parent_tli or entry.switchpoint < previous.switchpoint):
            raise PgBackupError(f"timeline history is out of order at timeline {entry.parent_tli}: entries must go from oldest to newest")
        previous = entry
    if previous is not None and previous.parent_tli >= newest_tli:
        raise PgBackupError(
            f"timeline history mentions timeline {previous.parent_tli}, not older than timeline {newest_tli}: "
            f"it is not the history of timeline {newest_tli}; read {history_file_name(newest_tli) if newest_tli >= 2 else 'no file'} instead"
        )


def timeline_of_lsn(lsn: int, history: list[TimelineHistoryEntry], newest_tli: int) -> int:
    """The timeline a WAL position belongs to in the history of ``newest_tli`` (``tliOfPointInHistory``).

    A parent timeline covers the bytes before its switchpoint; the newest covers the rest.
    """
    check_lsn(lsn)
    _check_history(history, newest_tli)
    for entry in history:
        if lsn < entry.switchpoint:
            return entry.parent_tli
    return newest_tli


def timeline_starts(history: list[TimelineHistoryEntry], newest_tli: int) -> list[tuple[int, int]]:
    """``(timeline, begin LSN)`` of every timeline in the history, oldest first; the oldest begins at 0/0."""
    _check_history(history, newest_tli)
    tlis = [e.parent_tli for e in history] + [newest_tli]
    begins = [0] + [e.switchpoint for e in history]
    return list(zip(tlis, begins))


def segments_between(start_lsn: int, stop_lsn: int, stop_tli: int, history: list[TimelineHistoryEntry], seg_size: int) -> list[str]:
    """Every segment file recovery reads from the segment of ``start_lsn`` to the end segment of ``stop_lsn``.

    ``history`` is the parsed history of ``stop_tli`` (empty for timeline 1). For each segment the
    timeline is the newest one whose first segment is at or below it, which is the file
    ``XLogFileReadAnyTLI`` opens first: a segment holding a switchpoint is taken from the new timeline
    (it holds the old timeline's WAL up to the switch, copied at promotion). The last segment is the
    one holding the byte before ``stop_lsn`` (a stop exactly on a boundary needs nothing after it).
    """
    check_segment_size(seg_size)
    check_lsn(start_lsn)
    check_lsn(stop_lsn)
    starts = timeline_starts(history, stop_tli)
    if stop_lsn <= start_lsn:
        raise PgBackupError(
            f"stop LSN {format_lsn(stop_lsn)} is not after start LSN {format_lsn(start_lsn)}: a backup's WAL range cannot be empty; "
            "check that start and stop come from the same backup"
        )
    if starts[-1][1] > stop_lsn:
        raise PgBackupError(
            f"stop LSN {format_lsn(stop_lsn)} is before timeline {stop_tli} began at {format_lsn(starts[-1][1])}: "
            f"the stop timeline or its history does not match the stop LSN"
        )
    first = segment_number(start_lsn, seg_size)
    last = _check_segno(end_segment_number(stop_lsn, seg_size), seg_size)
    for tli, _begin in starts:
        check_timeline(tli)
    begin_segs = [(tli, segment_number(begin, seg_size)) for tli, begin in starts]
    # The timeline only changes where some timeline begins: name each run of segments between two such points at once
    # (a million segments in well under a second; checking each name alone took 14 s).
    points = sorted({s for _t, s in begin_segs if first < s <= last} | {first})
    per_id = segments_per_xlogid(seg_size)
    names: list = []
    for index, low in enumerate(points):
        high = points[index + 1] if index + 1 < len(points) else last + 1
        tli = max(t for t, s in begin_segs if s <= low)
        segno = low
        while segno < high:  # one 4 GB "xlogid" at a time: its name prefix is the same for all its segments
            xlogid, offset = divmod(segno, per_id)
            stop = min(high, (xlogid + 1) * per_id)
            prefix = f"{tli:08X}{xlogid:08X}"
            names.extend([prefix + format(n, "08X") for n in range(offset, offset + stop - segno)])
            segno = stop
    return names


def timeline_ranges(start_lsn: int, start_tli: int, stop_lsn: int, stop_tli: int, history: list[TimelineHistoryEntry]) -> list[tuple[int, int, int]]:
    """``(timeline, start LSN, end LSN)`` of the WAL a backup needs on each timeline, newest first.

    The same ranges a server-written backup_manifest lists under ``WAL-Ranges``
    (``AddWALInfoToBackupManifest``): the stop timeline from its beginning to the stop, back to the
    start timeline from the backup's start.
    """
    check_timeline(start_tli, "start timeline")
    starts = timeline_starts(history, stop_tli)
    ends = [e.switchpoint for e in history] + [None]
    ranges = []
    end = stop_lsn
    for (tli, begin), tl_end in reversed(list(zip(starts, ends))):
        if tl_end is not None and tl_end < start_lsn:
            continue
        if tli == start_tli:
            ranges.append((tli, start_lsn, end))
            return ranges
        if tli == starts[0][0]:
            break
        ranges.append((tli, begin, end))
        end = begin
    raise PgBackupError(
        f"start timeline {start_tli} is not in the history of timeline {stop_tli} at or after the start LSN {format_lsn(start_lsn)}: "
        "the backup's start and stop do not belong to one timeline history"
    )


def history_files_needed(stop_tli: int, history: list[TimelineHistoryEntry], *, required_only: bool = False) -> list[str]:
    """History files a restore of a backup that stopped on ``stop_tli`` should have, oldest timeline first.

    Recovery reads only the stop timeline's own file (it lists every ancestor); the ancestors'
    files are included unless ``required_only`` because recovery looks for them too (and does not
    fail without them) and they keep an archive self-describing. Timeline 1 has no file.
    """
    _check_history(history, stop_tli)
    if required_only:
        return [history_file_name(stop_tli)] if stop_tli >= 2 else []
    tlis = [e.parent_tli for e in history] + [stop_tli]
    return [history_file_name(t) for t in tlis if t >= 2]


def old_timeline_files(start_lsn: int, start_tli: int, stop_lsn: int, stop_tli: int, history: list[TimelineHistoryEntry], seg_size: int) -> list:
    """``(file name, end LSN)`` of the old-timeline segments a manifest's WAL-Ranges promise beyond ``segments_between``.

    pg_verifybackup parses each WAL-Ranges entry with pg_waldump on that entry's timeline, so the range of an old
    timeline ending at a switchpoint inside a segment needs the *old* timeline's file of that segment, through the
    switchpoint; recovery itself reads the new timeline's file there (``XLogFileReadAnyTLI`` tries the newest
    timeline first). A switchpoint exactly on a segment boundary needs nothing more.
    """
    begin_segs = [(tli, segment_number(begin, seg_size)) for tli, begin in timeline_starts(history, stop_tli)]
    extra = []
    for tli, begin, end in reversed(timeline_ranges(start_lsn, start_tli, stop_lsn, stop_tli, history)):
        first, last = segment_number(begin, seg_size), end_segment_number(end, seg_size)
        # Inside a range recovery reads this timeline's own file: only a segment where a timeline begins or ends can
        # be another timeline's in recovery, so only the range's first and last segments are looked at.
        for segno in sorted({first, last}):
            if max(t for t, s in begin_segs if s <= segno) != tli:
                extra.append((wal_file_name(tli, segno, seg_size), min(end, (segno + 1) * seg_size)))
    return extra
