"""The page checksum against pages PostgreSQL 15 wrote with data checksums on (vectors/pages), and the packed-lane
version against the plain one on many pages at once."""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.page_checksum import BLCKSZ, page_checksum, page_checksums

VECTORS = Path(__file__).parent / "vectors" / "pages"


def real_pages() -> list:
    data = gzip.decompress((VECTORS / "pg15_pages.bin.gz").read_bytes())
    blocks = json.loads((VECTORS / "pg15_pages.json").read_text())["blocks"]
    return [(data[i * BLCKSZ : (i + 1) * BLCKSZ], blkno) for i, blkno in enumerate(blocks)]


def stored(page: bytes) -> int:
    return struct.unpack_from("<H", page, 8)[0]


@pytest.mark.parametrize("index", range(3))
def test_the_checksum_postgresql_stored(index):
    page, blkno = real_pages()[index]
    assert page_checksum(page, blkno) == stored(page)
    assert page_checksums(page, blkno) == [stored(page)]


@pytest.mark.parametrize("index", range(3))
def test_a_flipped_bit_or_another_block_number_fails(index):
    page, blkno = real_pages()[index]
    flipped = bytearray(page)
    flipped[BLCKSZ - 100] ^= 0x10
    assert page_checksum(bytes(flipped), blkno) != stored(page)
    assert page_checksums(bytes(flipped), blkno) != [stored(page)]
    assert page_checksums(page, blkno + 1) != [stored(page)], "a page moved to another block is caught"


def test_the_checksum_field_itself_does_not_count():
    page, blkno = real_pages()[0]
    other = bytearray(page)
    struct.pack_into("<H", other, 8, 0xBEEF)
    assert page_checksums(bytes(other), blkno) == [stored(page)]


def test_packed_lanes_equal_the_plain_algorithm_on_many_pages():
    rng = random.Random(7)
    pages = [rng.randbytes(BLCKSZ) for _page in range(5)] + [page for page, _blkno in real_pages()]
    fast = page_checksums(b"".join(pages), 131070)  # block numbers across a segment boundary (131072)
    assert fast == [page_checksum(page, 131070 + n) for n, page in enumerate(pages)]
    assert page_checksums(b"", 0) == [] and page_checksums(b"x" * 100, 0) == []
