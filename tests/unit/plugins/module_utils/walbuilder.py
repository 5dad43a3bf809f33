"""Synthetic WAL segments for the validator's tests: page headers, records and XLOG_SWITCH laid out as PostgreSQL does."""

from __future__ import annotations

import struct

from ansible_collections.pgbackup.lowlevel.plugins.module_utils.crc32c import crc32c

PAGE = 8192
MB = 1 << 20
SYSID = 7711124178589857337
MAGIC_15 = 0xD110


def maxalign(n: int) -> int:
    return (n + 7) & ~7


def record(data_len: int = 100, rmid: int = 10, info: int = 0x00, fill: int = 0x5A) -> bytes:
    """An XLogRecord of ``24 + data_len`` bytes with a correct CRC (not a decodable record body)."""
    payload = bytes([fill]) * data_len
    header = struct.pack("<IIQBBxx", 24 + data_len, 1234, 0, info, rmid)
    return header + struct.pack("<I", crc32c(header, crc32c(payload))) + payload


def switch_record() -> bytes:
    header = struct.pack("<IIQBBxx", 24, 0, 0, 0x40, 0)
    return header + struct.pack("<I", crc32c(header))


def build_segment(
    records: list[bytes],
    *,
    segno: int = 5,
    seg_size: int = MB,
    tli: int = 1,
    sysid: int = SYSID,
    magic: int = MAGIC_15,
    page_tlis: dict | None = None,
    info_extra: int = 0,
    continued: int = 0,
) -> bytes:
    """Pages holding ``records`` from the segment's first byte (after ``continued`` bytes of a record from before).

    Pages after the WAL written are all zeros (as after a switch, or not yet written).
    """
    stream = bytearray(b"\x5a" * continued)
    spans = [(0, continued)] if continued else []
    for rec in records:
        start = maxalign(len(stream))
        stream.extend(bytes(start - len(stream)))
        spans.append((start, len(rec)))
        stream.extend(rec)
    base = segno * seg_size
    out = bytearray()
    pos = 0
    page_no = 0
    while page_no < seg_size // PAGE:
        header_size = 40 if page_no == 0 else 24
        if pos >= len(stream):
            break
        rem_len = 0
        for start, length in spans:
            if start < pos < start + length or (start == 0 and continued and pos == 0 and start == pos):
                rem_len = start + length - pos
        info = (0x0002 if page_no == 0 else 0) | (0x0001 if rem_len else 0) | info_extra
        page_tli = (page_tlis or {}).get(page_no, tli)
        header = struct.pack("<HHIQI4x", magic, info, page_tli, base + page_no * PAGE, rem_len)
        if page_no == 0:
            header += struct.pack("<QII", sysid, seg_size, PAGE)
        body = bytes(stream[pos : pos + PAGE - header_size])
        out += header + body + bytes(PAGE - header_size - len(body))
        pos += PAGE - header_size
        page_no += 1
    out += bytes(seg_size - len(out))
    return bytes(out)


def payload_capacity(pages: int) -> int:
    """Bytes of record stream the first ``pages`` pages of a segment hold."""
    return pages * PAGE - 24 * pages - 16 if pages else 0


def full_segment(**kw) -> bytes:
    """A segment whose every page is written: records fill it and the last one runs into the next segment."""
    seg_size = kw.get("seg_size", MB)
    capacity = payload_capacity(seg_size // PAGE)
    records = []
    used = 0
    while used < capacity:
        rec = record(1000)
        records.append(rec)
        used = maxalign(used) + len(rec)
    return build_segment(records, **kw)


def page(segment: bytes, page_no: int) -> bytes:
    return segment[page_no * PAGE : (page_no + 1) * PAGE]


def with_page(segment: bytes, page_no: int, new: bytes) -> bytes:
    return segment[: page_no * PAGE] + new + segment[(page_no + 1) * PAGE :]


def patch(segment: bytes, offset: int, fmt: str, value) -> bytes:
    data = bytearray(segment)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)
