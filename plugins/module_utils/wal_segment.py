# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is this file really WAL segment N of this cluster? (``XLogReaderValidatePageHeader``, page by page).

Every 8 KB WAL page starts with a header (``xlog_internal.h``)::

    0  uint16 xlp_magic      2  uint16 xlp_info     4  uint32 xlp_tli
    8  uint64 xlp_pageaddr  16  uint32 xlp_rem_len  (24 bytes with padding)

and the first page of a segment has the long header, which adds ``xlp_sysid`` (24), ``xlp_seg_size``
(32) and ``xlp_xlog_blcksz`` (36). A recycled segment is an old file renamed to a future name: its
pages still carry their old page addresses, so checking ``xlp_pageaddr`` of *every* page against the
file name catches it, as does the system identifier for WAL of another cluster.

A complete segment is valid on every page, or valid up to an ``XLOG_SWITCH`` record and all-zero
after it (``pg_switch_wal``, ``archive_timeout`` and the end of a backup zero the rest of the segment,
headers included). Valid pages followed by zeros *without* a switch record is a segment copied while
it was still being written; that is refused unless the caller asks only for the WAL up to an LSN
(``complete=False``), as for the last segment of a backup taken from a standby or a ``.partial`` file.

Files are read in 1 MB chunks; a 1 GB segment is never held in memory.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Optional, Union

from .crc32c import crc32c
from .errors import PgBackupError
from .lsn import check_lsn, format_lsn
from .wal import XLOG_BLCKSZ, check_segment_size, parse_wal_file_name

WAL_PAGE_MAGIC = {13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
_MAJOR_OF_MAGIC = {magic: major for major, magic in WAL_PAGE_MAGIC.items()}
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_BKP_REMOVABLE = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
XLP_ALL_FLAGS = 0x000F
SIZE_OF_SHORT_PHD = 24
SIZE_OF_LONG_PHD = 40
SIZE_OF_XLOG_RECORD = 24
RM_XLOG_ID = 0
XLOG_SWITCH = 0x40
_SHORT = struct.Struct("<HHIQI")  # magic, info, tli, pageaddr, rem_len
_LONG = struct.Struct("<QII")  # sysid, seg_size, xlog_blcksz at offset 24
_RECORD = struct.Struct("<IIQBBxxI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, pad, xl_crc
_CHUNK = 1 << 20
_ZERO_PAGE = bytes(XLOG_BLCKSZ)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, io.RawIOBase, io.BufferedIOBase]


@dataclass(frozen=True)
class SegmentCheck:
    """What a valid segment was found to hold."""

    file_name: str
    timeline: int  # from the file name
    segment_number: int
    start_lsn: int  # LSN of the segment's first byte
    magic: int
    major_version: int  # from the page magic
    system_identifier: int
    first_timeline: int  # xlp_tli of the first page
    last_timeline: int  # xlp_tli of the last valid page
    timelines: tuple  # the distinct page timelines, in order
    pages_read: int
    valid_pages: int
    zero_from_page: Optional[int]  # first all-zero page (the rest after a WAL switch), if any
    end_lsn: int  # LSN just past the last page with a valid header
    switch_lsn: Optional[int]  # LSN of the XLOG_SWITCH record the segment ends with, if it ends early
    switch_end_lsn: Optional[int]  # the end of that record: what pg_switch_wal() returned
    complete: bool  # every page valid, or valid up to a WAL switch and zero after it

    def as_dict(self) -> dict:
        return {
            "file_name": self.file_name,
            "timeline": self.timeline,
            "major_version": self.major_version,
            "magic": f"{self.magic:04X}",
            "system_identifier": self.system_identifier,
            "first_timeline": self.first_timeline,
            "last_timeline": self.last_timeline,
            "valid_pages": self.valid_pages,
            "zero_from_page": self.zero_from_page,
            "start_lsn": format_lsn(self.start_lsn),
            "end_lsn": format_lsn(self.end_lsn),
            "switch_lsn": None if self.switch_lsn is None else format_lsn(self.switch_lsn),
            "switch_end_lsn": None if self.switch_end_lsn is None else format_lsn(self.switch_end_lsn),
            "complete": self.complete,
        }


def validate_segment(
    source: Source,
    *,
    file_name: str,
    system_identifier: int,
    seg_size: int,
    major_version: Optional[int] = None,
    through_lsn: Optional[int] = None,
    complete: bool = True,
) -> SegmentCheck:
    """Check every page header of a WAL segment against what its name and the cluster promise.

    ``source`` is a path, the bytes, or a binary file object (e.g. ``gzip.open(...)``).
    ``file_name`` is the name the segment is (or will be) known by; a ``.partial`` suffix is allowed.
    ``major_version`` pins the page magic; without it any one known magic is accepted (all pages alike).
    ``through_lsn``: the pages up to that LSN must be present, valid and not zero.
    ``complete=False`` reads only the pages up to ``through_lsn`` (required then): for a segment still
    being written, the last segment of a standby backup, or a ``.partial`` file.

    Raises PgBackupError listing every problem found (``details['problems']`` has them all).
    """
    tli, base = _segment_start(file_name, system_identifier, seg_size, major_version, through_lsn, complete)
    pages_total = seg_size // XLOG_BLCKSZ
    pages_needed = pages_total if complete else (through_lsn - base + XLOG_BLCKSZ - 1) // XLOG_BLCKSZ
    scan = _Scan(file_name, tli, base, system_identifier, seg_size, major_version)
    with _Reader(source, file_name) as reader:
        _scan_pages(reader, scan, pages_needed, complete)
    scan.finish(complete, through_lsn)
    return scan.result()


def _segment_start(file_name: str, system_identifier: int, seg_size: int, major_version: Optional[int], through_lsn: Optional[int],
                   complete: bool) -> tuple:  # fmt: skip
    """``(timeline, LSN of the first byte)`` of the segment ``file_name`` names, once every argument is checked."""
    check_segment_size(seg_size)
    if not isinstance(file_name, str):
        raise PgBackupError(f"file_name must be the segment's file name, got {file_name!r}")
    name = file_name[: -len(".partial")] if file_name.endswith(".partial") else file_name
    tli, segno = parse_wal_file_name(name, seg_size)
    if isinstance(system_identifier, bool) or not isinstance(system_identifier, int) or not 0 < system_identifier < 1 << 64:
        raise PgBackupError(f"system identifier {system_identifier!r} is not valid: expected the cluster's 64-bit identifier from pg_control")
    if major_version is not None and major_version not in WAL_PAGE_MAGIC:
        raise PgBackupError(f"PostgreSQL {major_version} is not supported: expected a major version from 13 to 18")
    base = segno * seg_size
    if through_lsn is not None:
        check_lsn(through_lsn)
        if not base < through_lsn <= base + seg_size:
            raise PgBackupError(
                f"{file_name} cannot hold WAL through {format_lsn(through_lsn)}: it covers {format_lsn(base)} up to {format_lsn(base + seg_size)}"
            )
    elif not complete:
        raise PgBackupError("complete=False needs through_lsn: the LSN up to which the segment must hold WAL")
    return tli, base


def _scan_pages(reader: _Reader, scan: _Scan, pages_needed: int, complete: bool) -> None:
    """Feed the first ``pages_needed`` pages to ``scan``, a chunk at a time, checking the file's size before and after."""
    if reader.size is not None:
        _check_size(scan.file_name, reader.size, scan.seg_size, pages_needed, complete)
    total = 0
    while scan.pages_read < pages_needed:
        want = min(_CHUNK, (pages_needed - scan.pages_read) * XLOG_BLCKSZ)
        chunk = reader.read(want)
        total += len(chunk)
        for offset in range(0, len(chunk) - XLOG_BLCKSZ + 1, XLOG_BLCKSZ):
            scan.page(chunk[offset : offset + XLOG_BLCKSZ])
        if len(chunk) < want:
            break
    if reader.size is None or total < pages_needed * XLOG_BLCKSZ:
        # A stream's size is known only now; a file may also have shrunk while we read it.
        size = total + (reader.count_rest() if complete and reader.size is None else 0)
        _check_size(scan.file_name, size, scan.seg_size, pages_needed, complete)


def _check_size(file_name: str, size: int, seg_size: int, pages_needed: int, complete: bool) -> None:
    if complete and size != seg_size:
        raise PgBackupError(
            f"{file_name} has {size} bytes, expected {seg_size}: the file is truncated or is not a complete WAL segment "
            "(fetch it again; a .partial file cannot stand in for a complete segment)",
            file_name=file_name,
            size=size,
            expected_size=seg_size,
        )
    if not complete and size < pages_needed * XLOG_BLCKSZ:
        raise PgBackupError(
            f"{file_name} has {size} bytes, expected at least {pages_needed * XLOG_BLCKSZ} to hold the WAL needed: the file is truncated",
            file_name=file_name,
            size=size,
            expected_size=pages_needed * XLOG_BLCKSZ,
        )


class _Reader:
    """A path, bytes or binary file object, read in chunks; ``size`` when it is known up front."""

    def __init__(self, source: Source, file_name: str) -> None:
        self._close = False
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._handle = io.BytesIO(bytes(source))
            self.size: Optional[int] = len(source) if not isinstance(source, memoryview) else source.nbytes
        elif isinstance(source, (str, os.PathLike)):
            try:
                self._handle = open(source, "rb")
            except OSError as exc:
                raise PgBackupError(f"cannot read WAL segment {os.fspath(source)}: {exc.strerror}", path=os.fspath(source)) from exc
            self._close = True
            self.size = os.fstat(self._handle.fileno()).st_size
        elif hasattr(source, "read"):
            self._handle = source
            self.size = None
        else:
            raise PgBackupError(f"cannot read WAL segment {file_name} from a {type(source).__name__}: pass a path, bytes or a binary file")

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._close:
            self._handle.close()

    def count_rest(self) -> int:
        """Read to the end, returning how many bytes were left."""
        count = 0
        while True:
            data = self._handle.read(_CHUNK)
            if not data:
                return count
            count += len(data)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the file."""
        parts = []
        while size > 0:
            data = self._handle.read(size)
            if not data:
                break
            parts.append(data)
            size -= len(data)
        return b"".join(parts)


class _Scan:
    def __init__(self, file_name: str, tli: int, base: int, sysid: int, seg_size: int, major: Optional[int]) -> None:
        self.file_name, self.tli, self.base, self.sysid, self.seg_size = file_name, tli, base, sysid, seg_size
        self.major = major
        self.magic: Optional[int] = None
        self.problems: list[tuple[str, str]] = []
        self.timelines: list[int] = []
        self.last_tli = 0
        self.pages_read = 0
        self.valid_pages = 0
        self.zero_from: Optional[int] = None
        self.valid_end = base
        self.stale_from: Optional[int] = None  # first page with another segment's address
        # the last two valid pages, when consecutive, to find the record that ends the WAL
        self.prev: Optional[tuple[int, bytes]] = None
        self.last: Optional[tuple[int, bytes]] = None

    def problem(self, kind: str, text: str) -> None:
        self.problems.append((kind, text))

    def page(self, page: bytes) -> None:
        page_no = self.pages_read
        self.pages_read += 1
        addr = self.base + page_no * XLOG_BLCKSZ
        where = f"page {page_no} (LSN {format_lsn(addr)})"
        if page == _ZERO_PAGE:
            if page_no == 0:
                self.problem("zero-first", "page 0 is all zeros: the file was pre-allocated and never written, it holds no WAL")
            if self.zero_from is None:
                self.zero_from = page_no
            return
        if self.zero_from is not None:
            self.problem("data-after-zero", f"{where} holds data after the all-zero page {self.zero_from}: the file's tail is stale or damaged")
        magic, info, page_tli, pageaddr, _rem_len = _SHORT.unpack_from(page)
        if not self._magic_matches(where, magic):
            self._break_chain()
            return
        self.magic = magic
        bad = False
        if info & ~XLP_ALL_FLAGS:
            self.problem("info", f"{where} has unknown flag bits {info:04X} in xlp_info (allowed: {XLP_ALL_FLAGS:04X})")
            bad = True
        if pageaddr != addr:
            self._stale_page(where, page_no, pageaddr, addr)
            self._break_chain()
            return
        if page_no == 0:
            bad = self._long_header(info, page) or bad
        elif info & XLP_LONG_HEADER:
            self.problem("long-elsewhere", f"{where} has the long-header flag, which only a segment's first page carries")
            bad = True
        bad = self._timeline_wrong(where, page_tli) or bad
        if bad:
            self._break_chain()
            return
        self._accept(page_no, page, page_tli, addr)

    def _magic_matches(self, where: str, magic: int) -> bool:
        """The page magic of the major version asked for, else the first page's (any known one on the first page)."""
        if self.major is not None:
            expected_magic = WAL_PAGE_MAGIC[self.major]
        else:
            expected_magic = self.magic if self.magic is not None else (magic if magic in _MAJOR_OF_MAGIC else None)
        if magic == expected_magic:
            return True
        if expected_magic is None:
            wanted = "the magic of PostgreSQL 13 to 18 (" + ", ".join(f"{m:04X}" for m in WAL_PAGE_MAGIC.values()) + ")"
        else:
            wanted = f"{expected_magic:04X} (PostgreSQL {_MAJOR_OF_MAGIC[expected_magic]})"
        known = f" (PostgreSQL {_MAJOR_OF_MAGIC[magic]})" if magic in _MAJOR_OF_MAGIC else ""
        self.problem("magic", f"{where} has magic number {magic:04X}{known}, expected {wanted}: it is not WAL of this PostgreSQL version")
        return False

    def _stale_page(self, where: str, page_no: int, pageaddr: int, addr: int) -> None:
        self.problem(
            "pageaddr",
            f"{where} has page address {format_lsn(pageaddr)}, expected {format_lsn(addr)}: "
            "the file is a recycled or renamed segment, not the one its name promises",
        )
        if self.stale_from is None:
            self.stale_from = page_no

    def _timeline_wrong(self, where: str, page_tli: int) -> bool:
        """A page timeline PostgreSQL never writes there: 0, above the file name's, or back from an earlier page's."""
        if page_tli == 0:
            self.problem("tli-zero", f"{where} has timeline 0 in its header, which PostgreSQL never writes")
        elif page_tli > self.tli:
            self.problem(
                "tli-high",
                f"{where} was written on timeline {page_tli}, above the file name's timeline {self.tli}: "
                "the file holds another timeline's WAL than its name says",
            )
        elif page_tli < self.last_tli:
            self.problem("tli-back", f"{where} goes back from timeline {self.last_tli} to {page_tli}: timelines never decrease within WAL")
        else:
            return False
        return True

    def _accept(self, page_no: int, page: bytes, page_tli: int, addr: int) -> None:
        """A valid page: its timeline counted, the valid end moved, kept as one of the last two for the switch record."""
        if not self.timelines or self.timelines[-1] != page_tli:
            self.timelines.append(page_tli)
        self.last_tli = page_tli
        self.valid_pages += 1
        self.valid_end = addr + XLOG_BLCKSZ
        self.prev = self.last if self.last is not None and self.last[0] == page_no - 1 else None
        self.last = (page_no, page)

    def _break_chain(self) -> None:
        self.prev = self.last = None

    def _long_header(self, info: int, page: bytes) -> bool:
        if not info & XLP_LONG_HEADER:
            self.problem("no-long", f"page 0 has xlp_info {info:04X} without the long header every segment starts with")
            return True
        sysid, seg_size, blcksz = _LONG.unpack_from(page, SIZE_OF_SHORT_PHD)
        bad = False
        if sysid != self.sysid:
            self.problem(
                "sysid",
                f"the segment belongs to the cluster with system identifier {sysid}, expected {self.sysid}: it is WAL of another cluster",
            )
            bad = True
        if seg_size != self.seg_size:
            self.problem("segsize", f"the segment header says segment size {seg_size}, expected {self.seg_size}")
            bad = True
        if blcksz != XLOG_BLCKSZ:
            self.problem("blcksz", f"the segment header says WAL block size {blcksz}, expected {XLOG_BLCKSZ}")
            bad = True
        return bad

    def finish(self, complete: bool, through_lsn: Optional[int]) -> None:
        self.switch_lsn: Optional[int] = None
        self.switch_end_lsn: Optional[int] = None
        self.complete = False
        if self.problems:
            return
        if self.zero_from is None:
            self.complete = self.pages_read * XLOG_BLCKSZ == self.seg_size
        elif self.last is not None and self.last[0] == self.zero_from - 1:
            self.switch_lsn = self._switch_record()
            self.complete = self.switch_lsn is not None
        # A segment that ends with an XLOG_SWITCH record holds WAL through its end: the zero tail is the switch's
        # (a stop exactly on the boundary, X/Y000000, is the end of that record's segment).
        if through_lsn is not None and self.valid_end < through_lsn and self.switch_lsn is None:
            self.problem(
                "through",
                f"the segment holds valid pages only up to {format_lsn(self.valid_end)}, not through {format_lsn(through_lsn)} as needed: "
                "it was copied before that WAL was written",
            )
        elif complete and not self.complete:
            self.problem(
                "incomplete",
                f"the segment's WAL stops at {format_lsn(self.valid_end)} (page {self.zero_from}) without a WAL switch record: "
                "it was copied while PostgreSQL was still writing it; fetch it again once it is archived",
            )

    def _switch_record(self) -> Optional[int]:
        """LSN of the XLOG_SWITCH record that ends the WAL on the last valid pages, or None."""
        pages = [p for p in (self.prev, self.last) if p is not None]
        payloads = []
        for page_no, page in pages:
            header = SIZE_OF_LONG_PHD if page_no == 0 else SIZE_OF_SHORT_PHD
            payloads.append((page_no, header, page[header:]))
        stream = b"".join(payload for _page_no, _header, payload in payloads)
        # Where the first record starts: after the continuation of a record from an earlier page.
        pos = 0
        for page_no, page in pages:
            payload_len = XLOG_BLCKSZ - (SIZE_OF_LONG_PHD if page_no == 0 else SIZE_OF_SHORT_PHD)
            _magic, info, _tli, _addr, rem_len = _SHORT.unpack_from(page)
            skip = _maxalign(rem_len) if info & XLP_FIRST_IS_CONTRECORD else 0
            if skip < payload_len:
                pos += skip
                break
            pos += payload_len
        else:
            return None  # no record starts on these pages: the last one began earlier and was cut off
        last = None
        while pos + 4 <= len(stream):
            tot_len = struct.unpack_from("<I", stream, pos)[0]
            if tot_len == 0:
                break
            if tot_len < SIZE_OF_XLOG_RECORD or pos + tot_len > len(stream):
                return None  # a record running into the zero pages: cut off
            last = pos
            pos = _maxalign(pos + tot_len)
        if last is None or pos < len(stream) - len(payloads[-1][2]):
            return None
        tot_len, _xid, _prev, xl_info, rmid, xl_crc = _RECORD.unpack_from(stream, last)
        if tot_len != SIZE_OF_XLOG_RECORD or rmid != RM_XLOG_ID or xl_info & 0xF0 != XLOG_SWITCH:
            return None
        if crc32c(stream[last : last + 20]) != xl_crc:
            return None
        self.switch_end_lsn = self._stream_lsn(payloads, last + SIZE_OF_XLOG_RECORD, end=True)
        return self._stream_lsn(payloads, last)

    def _stream_lsn(self, payloads: list, offset: int, end: bool = False) -> int:
        """The LSN of a byte offset in the concatenated page payloads (page headers left out).

        An end pointer exactly at a page's end stays there (``XLogBytePosToEndRecPtr``) instead of
        moving past the next page's header.
        """
        for page_no, header, payload in payloads[:-1]:
            if offset < len(payload) or (end and offset == len(payload)):
                return self.base + page_no * XLOG_BLCKSZ + header + offset
            offset -= len(payload)
        page_no, header = payloads[-1][:2]
        return self.base + page_no * XLOG_BLCKSZ + header + offset

    def result(self) -> SegmentCheck:
        if self.problems:
            hint = ""
            if self.stale_from and self.valid_pages and self.valid_end == self.base + self.stale_from * XLOG_BLCKSZ:
                hint = (
                    f"; pages 0 to {self.stale_from - 1} are right, so the file was probably copied from pg_wal before PostgreSQL "
                    "finished writing it (the rest is a recycled file's old content): fetch it again once it is archived"
                )
            raise PgBackupError(
                f"WAL segment {self.file_name} is not valid: " + "; ".join(_summarise(self.problems)) + hint,
                file_name=self.file_name,
                problems=[text for _kind, text in self.problems],
            )
        return SegmentCheck(
            file_name=self.file_name,
            timeline=self.tli,
            segment_number=self.base // self.seg_size,
            start_lsn=self.base,
            magic=self.magic or 0,
            major_version=_MAJOR_OF_MAGIC.get(self.magic or 0, 0),
            system_identifier=self.sysid,
            first_timeline=self.timelines[0] if self.timelines else 0,
            last_timeline=self.last_tli,
            timelines=tuple(self.timelines),
            pages_read=self.pages_read,
            valid_pages=self.valid_pages,
            zero_from_page=self.zero_from,
            end_lsn=self.valid_end,
            switch_lsn=self.switch_lsn,
            switch_end_lsn=self.switch_end_lsn,
            complete=self.complete,
        )


def _maxalign(value: int) -> int:
    return (value + 7) & ~7


def _summarise(problems: list[tuple[str, str]]) -> list[str]:
    """One line per kind of problem: the first occurrence, and how many pages had the same."""
    order: list[str] = []
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for kind, text in problems:
        if kind not in first:
            order.append(kind)
            first[kind] = text
            count[kind] = 0
        count[kind] += 1
    return [first[k] + (f" (and {count[k] - 1} more pages like it)" if count[k] > 1 else "") for k in order]


@dataclass(frozen=True)
class RecordCheck:
    """What ``check_records_through`` found: the records of a segment from its first record start to an LSN."""

    file_name: str
    records: int
    first_record_lsn: Optional[int]  # None when the LSN is the end of a record continued from the previous segment
    end_lsn: int  # the end (EndRecPtr) of the last record: the LSN asked for


def check_records_through(
    source: Union[str, os.PathLike[str], bytes, bytearray],
    *,
    file_name: str,
    system_identifier: int,
    seg_size: int,
    through_lsn: int,
    major_version: Optional[int] = None,
) -> RecordCheck:
    """Check that a segment holds valid WAL *records* from its first record up to exactly ``through_lsn``.

    For the old timeline's file of the segment holding a timeline switch: pg_waldump (run by pg_verifybackup over each
    WAL-Ranges entry) reads it on the old timeline up to the switchpoint, which is the end of a record
    (``EndOfLog``). The page headers are checked first (``validate_segment`` through the LSN), then every record from
    the first one that starts in the segment (after the rest of a record continued from the previous segment) is
    decoded as ``XLogDecodeNextRecord`` does: length, continuation pages (``XLP_FIRST_IS_CONTRECORD`` with the
    remaining length), ``xl_prev`` chaining, CRC-32C. The last record must end exactly at ``through_lsn``; what the
    file holds after it (a partial record, a recycled file's stale pages) is not read.
    """
    validate_segment(source, file_name=file_name, system_identifier=system_identifier, seg_size=seg_size,
                     major_version=major_version, through_lsn=through_lsn, complete=False)  # fmt: skip
    name = file_name[: -len(".partial")] if file_name.endswith(".partial") else file_name
    _tli, segno = parse_wal_file_name(name, seg_size)
    base = segno * seg_size
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            data = handle.read(through_lsn - base)
    else:
        data = bytes(source[: through_lsn - base])
    walk = _RecordWalk(file_name, data, base)
    result = walk.run()
    if walk.problems:
        raise PgBackupError(
            f"WAL segment {file_name} does not hold valid records through {format_lsn(through_lsn)}: " + "; ".join(walk.problems),
            file_name=file_name,
            problems=list(walk.problems),
        )
    return result


class _RecordWalk:
    """Records of ``data`` (the first bytes of a segment starting at LSN ``base``), up to the end of ``data``."""

    def __init__(self, file_name: str, data: bytes, base: int) -> None:
        self.file_name, self.data, self.base, self.end = file_name, data, base, len(data)
        self.problems: list = []
        self.crc = _record_crc()

    def lsn(self, offset: int) -> str:
        return format_lsn(self.base + offset)

    @staticmethod
    def header_size(page_no: int) -> int:
        return SIZE_OF_LONG_PHD if page_no == 0 else SIZE_OF_SHORT_PHD

    def page_header(self, page_no: int) -> tuple:
        _magic, info, _tli, _addr, rem_len = _SHORT.unpack_from(self.data, page_no * XLOG_BLCKSZ)
        return info, rem_len

    def first_record(self) -> Optional[int]:
        """Offset of the first record starting in the segment (after a record continued from before), None if none."""
        page_no = 0
        while True:
            info, rem_len = self.page_header(page_no)
            header = self.header_size(page_no)
            if not info & XLP_FIRST_IS_CONTRECORD:
                return page_no * XLOG_BLCKSZ + header
            if rem_len <= XLOG_BLCKSZ - header:
                return page_no * XLOG_BLCKSZ + header + _maxalign(rem_len)
            page_no += 1
            if page_no * XLOG_BLCKSZ >= self.end:
                return None
            next_info, next_rem = self.page_header(page_no)
            if not next_info & XLP_FIRST_IS_CONTRECORD or next_rem != rem_len - (XLOG_BLCKSZ - header):
                self.problems.append(
                    f"page {page_no} (LSN {self.lsn(page_no * XLOG_BLCKSZ)}) does not continue the record from the previous segment "
                    f"(xlp_info {next_info:04X}, xlp_rem_len {next_rem}, expected {rem_len - (XLOG_BLCKSZ - header)})"
                )
                return None

    def run(self) -> RecordCheck:
        pos = self.first_record()
        if pos is None:
            if not self.problems:
                self.problems.append(f"{self.lsn(self.end)} is inside a record continued from the previous segment, not at a record's end")
            return RecordCheck(self.file_name, 0, None, self.base + self.end)
        first = pos
        records = 0
        prev: Optional[int] = None
        while pos < self.end:
            if pos % XLOG_BLCKSZ == 0:
                pos += self.header_size(pos // XLOG_BLCKSZ)
                if pos >= self.end:
                    self.problems.append(f"{self.lsn(self.end)} is inside the page header at {self.lsn(pos - 1)}, not at a record's end")
                    break
            record_end = self.record(pos, prev)
            if record_end is None:
                break
            records += 1
            prev = pos
            pos = _maxalign(record_end)
        if not self.problems and pos != self.end:
            self.problems.append(f"the last record before {self.lsn(self.end)} ends at {self.lsn(pos)}: {self.lsn(self.end)} is not a record's end")
        return RecordCheck(self.file_name, records, self.base + first, self.base + self.end)

    def record(self, pos: int, prev: Optional[int]) -> Optional[int]:
        """Decode the record at ``pos``; returns the offset just past its last byte, or None (a problem is recorded)."""
        where = f"the record at {self.lsn(pos)}"
        if pos + 4 > self.end:
            self.problems.append(f"{where} runs past {self.lsn(self.end)}: that LSN is not a record's end")
            return None
        tot_len = struct.unpack_from("<I", self.data, pos)[0]
        if tot_len == 0:
            self.problems.append(f"no record at {self.lsn(pos)} (length 0): the WAL ends before {self.lsn(self.end)}")
            return None
        if tot_len < SIZE_OF_XLOG_RECORD:
            self.problems.append(f"{where} has length {tot_len}, below the {SIZE_OF_XLOG_RECORD}-byte record header")
            return None
        parts = []
        cur, remaining = pos, tot_len
        while remaining:
            if cur >= self.end:
                self.problems.append(f"{where} ({tot_len} bytes) runs past {self.lsn(self.end)}: that LSN is not a record's end")
                return None
            if cur % XLOG_BLCKSZ == 0:
                page_no = cur // XLOG_BLCKSZ
                info, rem_len = self.page_header(page_no)
                if not info & XLP_FIRST_IS_CONTRECORD or rem_len != remaining:
                    self.problems.append(
                        f"page {page_no} (LSN {self.lsn(cur)}) does not continue {where} (xlp_info {info:04X}, "
                        f"xlp_rem_len {rem_len}, expected {remaining} bytes to come)"
                    )
                    return None
                cur += self.header_size(page_no)
            take = min(remaining, XLOG_BLCKSZ - cur % XLOG_BLCKSZ, self.end - cur)
            parts.append(self.data[cur : cur + take])
            cur += take
            remaining -= take
        rec = b"".join(parts)
        _tot, _xid, xl_prev, xl_info, rmid, xl_crc = _RECORD.unpack_from(rec)
        if prev is not None and xl_prev != self.base + prev:
            self.problems.append(f"{where} points back to {format_lsn(xl_prev)}, expected the previous record {self.lsn(prev)}")
            return None
        if self.crc(rec[:20], self.crc(rec[SIZE_OF_XLOG_RECORD:])) != xl_crc:
            self.problems.append(f"{where} has a wrong CRC: its bytes are damaged")
            return None
        if rmid == RM_XLOG_ID and xl_info & 0xF0 == XLOG_SWITCH and cur < self.end:
            self.problems.append(f"{where} is a WAL switch: the segment holds no WAL after it, yet {self.lsn(self.end)} is later")
            return None
        return cur


def _record_crc():
    """A C CRC-32C when one is importable (a 16 MB segment's records in pure Python take seconds), else ours."""
    try:
        import crc32c as native  # type: ignore[import-not-found]

        return native.crc32c  # crc32c(data, value)
    except ImportError:
        return crc32c
