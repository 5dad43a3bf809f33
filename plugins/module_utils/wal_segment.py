# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is this file really WAL segment N of this cluster? (XLogReaderValidatePageHeader, page by page).

A recycled segment is an old file renamed to a future name: its pages still carry their old page
addresses, so checking ``xlp_pageaddr`` of every page against the file name catches it.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Optional, Union

from .errors import PgBackupError
from .lsn import format_lsn
from .wal import XLOG_BLCKSZ, check_segment_size, parse_wal_file_name, segment_start_lsn

WAL_PAGE_MAGIC = {13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
_MAJOR_OF_MAGIC = {magic: major for major, magic in WAL_PAGE_MAGIC.items()}
XLP_LONG_HEADER = 0x0002
XLP_ALL_FLAGS = 0x000F
_SHORT = struct.Struct("<HHIQI")  # magic, info, tli, pageaddr, rem_len
_LONG = struct.Struct("<QII")  # sysid, seg_size, xlog_blcksz (at offset 24)
_CHUNK = 1 << 20
_MAX_PROBLEMS = 20


@dataclass(frozen=True)
class SegmentCheck:
    """What a valid segment was found to hold."""

    file_name: str
    major_version: int
    system_identifier: int
    first_timeline: int
    last_timeline: int
    valid_pages: int
    zero_from_page: Optional[int]  # first all-zero page (the rest after a WAL switch), if any
    end_lsn: int  # LSN just past the last page with a valid header


def validate_segment(
    source: Union[str, bytes],
    *,
    file_name: str,
    system_identifier: int,
    seg_size: int,
    major_version: Optional[int] = None,
    through_lsn: Optional[int] = None,
    complete: bool = True,
) -> SegmentCheck:
    """Check every page header of a WAL segment against what its name and the cluster promise.

    ``through_lsn``: the pages up to that LSN must be present, valid and not zero. ``complete=False``
    (a segment still being written, taken from a live pg_wal) checks only the pages before ``through_lsn``.
    Raises PgBackupError listing every problem found.
    """
    check_segment_size(seg_size)
    tli, segno = parse_wal_file_name(file_name, seg_size)
    base = segment_start_lsn(segno, seg_size)
    if through_lsn is not None and not base < through_lsn <= base + seg_size:
        raise PgBackupError(f"{file_name} cannot hold WAL through {format_lsn(through_lsn)}: it covers {format_lsn(base)} to {format_lsn(base + seg_size)}")
    if major_version is not None and major_version not in WAL_PAGE_MAGIC:
        raise PgBackupError(f"PostgreSQL {major_version} is not supported: expected 13 to 18")
    pages_needed = seg_size // XLOG_BLCKSZ
    if through_lsn is not None and not complete:
        pages_needed = (through_lsn - base + XLOG_BLCKSZ - 1) // XLOG_BLCKSZ
    state = _Scan(file_name, tli, base, system_identifier, seg_size, major_version)
    with _open(source) as handle:
        size = _size(handle)
        if size < pages_needed * XLOG_BLCKSZ or (complete and size != seg_size):
            raise PgBackupError(
                f"{file_name} has {size} bytes, expected {seg_size if complete else pages_needed * XLOG_BLCKSZ}: the file is truncated or is not "
                "a complete WAL segment (a .partial file cannot stand in for a complete one)"
            )
        page_no = 0
        while page_no < pages_needed:
            chunk = handle.read(min(_CHUNK, (pages_needed - page_no) * XLOG_BLCKSZ))
            for offset in range(0, len(chunk), XLOG_BLCKSZ):
                state.page(page_no, chunk[offset : offset + XLOG_BLCKSZ])
                page_no += 1
    if through_lsn is not None and state.valid_end < through_lsn:
        state.problem(f"holds valid pages only up to {format_lsn(state.valid_end)}, not through {format_lsn(through_lsn)}")
    return state.result()


class _Scan:
    def __init__(self, file_name: str, tli: int, base: int, sysid: int, seg_size: int, major: Optional[int]) -> None:
        self.file_name, self.tli, self.base, self.sysid, self.seg_size = file_name, tli, base, sysid, seg_size
        self.major = major
        self.problems: list[str] = []
        self.first_tli: Optional[int] = None
        self.last_tli = 0
        self.valid_pages = 0
        self.zero_from: Optional[int] = None
        self.valid_end = base

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def page(self, page_no: int, page: bytes) -> None:
        where = f"page {page_no} (LSN {format_lsn(self.base + page_no * XLOG_BLCKSZ)})"
        if not any(page):
            if page_no == 0:
                self.problem("page 0 is all zeros: the file was pre-allocated and never written")
            if self.zero_from is None:
                self.zero_from = page_no
            return
        if self.zero_from is not None:
            self.problem(f"{where} has data after the all-zero page {self.zero_from}: the tail is stale")
            self.zero_from = None
        magic, info, page_tli, pageaddr, _ = _SHORT.unpack_from(page)
        expected_major = self.major if self.major is not None else _MAJOR_OF_MAGIC.get(magic)
        if expected_major is None or magic != WAL_PAGE_MAGIC[expected_major]:
            wanted = f"{WAL_PAGE_MAGIC[self.major]:04X} (PostgreSQL {self.major})" if self.major else "one of PostgreSQL 13-18's"
            self.problem(f"{where} has magic {magic:04X}, expected {wanted}: not WAL of this version")
            return
        self.major = expected_major
        if info & ~XLP_ALL_FLAGS:
            self.problem(f"{where} has unknown flag bits {info:04X} in xlp_info")
        expected_addr = self.base + page_no * XLOG_BLCKSZ
        if pageaddr != expected_addr:
            self.problem(
                f"{where} has page address {format_lsn(pageaddr)}, expected {format_lsn(expected_addr)}: "
                "the file is a recycled or renamed segment, not the one its name promises"
            )
            return
        if page_tli > self.tli:
            self.problem(f"{where} is on timeline {page_tli}, above the file name's timeline {self.tli}")
        elif page_tli < self.last_tli:
            self.problem(f"{where} goes back from timeline {self.last_tli} to {page_tli}")
        if page_no == 0:
            self._long_header(info, page)
        if self.first_tli is None:
            self.first_tli = page_tli
        self.last_tli = max(self.last_tli, page_tli)
        self.valid_pages += 1
        self.valid_end = expected_addr + XLOG_BLCKSZ

    def _long_header(self, info: int, page: bytes) -> None:
        if not info & XLP_LONG_HEADER:
            self.problem("page 0 lacks the long header every segment starts with")
            return
        sysid, seg_size, blcksz = _LONG.unpack_from(page, _SHORT.size + 4)
        if sysid != self.sysid:
            self.problem(f"belongs to the cluster with system identifier {sysid}, expected {self.sysid}: it is WAL of another cluster")
        if seg_size != self.seg_size:
            self.problem(f"says segment size {seg_size}, expected {self.seg_size}")
        if blcksz != XLOG_BLCKSZ:
            self.problem(f"says WAL block size {blcksz}, expected {XLOG_BLCKSZ}")

    def result(self) -> SegmentCheck:
        if self.problems:
            shown = self.problems[:_MAX_PROBLEMS]
            more = len(self.problems) - len(shown)
            raise PgBackupError(
                f"WAL segment {self.file_name} is not valid: " + "; ".join(shown) + (f"; and {more} more problems" if more else ""),
                file_name=self.file_name,
                problems=self.problems,
            )
        return SegmentCheck(
            file_name=self.file_name,
            major_version=self.major or 0,
            system_identifier=self.sysid,
            first_timeline=self.first_tli or 0,
            last_timeline=self.last_tli,
            valid_pages=self.valid_pages,
            zero_from_page=self.zero_from,
            end_lsn=self.valid_end,
        )


def _open(source: Union[str, bytes]):
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    try:
        return open(source, "rb")
    except OSError as exc:
        raise PgBackupError(f"cannot read WAL segment {source}: {exc.strerror}") from exc


def _size(handle) -> int:
    if isinstance(handle, io.BytesIO):
        return len(handle.getbuffer())
    return os.fstat(handle.fileno()).st_size
