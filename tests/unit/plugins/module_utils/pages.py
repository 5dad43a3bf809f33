"""Synthetic heap pages with a given LSN and the checksum PostgreSQL would store for their block number."""

from __future__ import annotations

import struct

from ansible_collections.pgbackup.lowlevel.plugins.module_utils.page_checksum import BLCKSZ, page_checksum


def page(lsn: int, blkno: int, *, fill: int = 0x5A, checksum: bool = True) -> bytes:
    """An initialised page (pd_lower 24, pd_upper 4096, pd_special BLCKSZ, layout version 4) with ``lsn``."""
    header = struct.pack("<IIHHHHHHI", lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, 24, 4096, BLCKSZ, BLCKSZ | 4, 0)
    body = bytearray(header + bytes([fill]) * (BLCKSZ - len(header)))
    if checksum:
        struct.pack_into("<H", body, 8, page_checksum(bytes(body), blkno))
    return bytes(body)
