# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's data page checksum (src/include/storage/checksum_impl.h), for many pages at once in pure Python.

The algorithm keeps 32 FNV-1a-like lanes; lane ``j`` mixes in the 32-bit words ``j, j+32, j+64...`` of the page (with
``pd_checksum`` taken as zero), then two rounds of zeros; the lanes are xor-folded, the block number is xored in, and
the result is reduced to ``% 65535 + 1``. A lane step is ``t = s ^ w; s = (t * FNV_PRIME) ^ (t >> 17)`` on 32 bits.

Per word in Python that is ~0.5 ms a page. Here the lanes of every page of a chunk live in one big integer, a lane per
64-bit slot: ``t * FNV_PRIME`` needs at most 57 bits, so no carry reaches the next slot, and the bits that ``>> 17``
moves into the slot below fall outside its low 32 bits, which the mask keeps. One step of all lanes of all pages is
then four big-integer operations, which Python runs in C (~130 MB/s on one core for 1 MiB chunks).
"""

from __future__ import annotations

from array import array

BLCKSZ = 8192
N_SUMS = 32
FNV_PRIME = 16777619
ROWS = BLCKSZ // (4 * N_SUMS)
BASE_OFFSETS = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)  # fmt: skip
PAGES_PER_CHUNK = 128  # 1 MiB: the fastest size measured (bigger integers cost more than the per-row overhead saved)

_SLOT_BASE = b"".join(v.to_bytes(8, "little") for v in BASE_OFFSETS)
_SLOT_MASK = b"\xff\xff\xff\xff\x00\x00\x00\x00" * N_SUMS
_cache: dict = {}


def _start_and_mask(pages: int) -> tuple:
    if pages not in _cache:
        _cache[pages] = (int.from_bytes(_SLOT_BASE * pages, "little"), int.from_bytes(_SLOT_MASK * pages, "little"))
    return _cache[pages]


def page_checksum(page: bytes, blkno: int) -> int:
    """The checksum PostgreSQL stores in ``pd_checksum`` of this page at block ``blkno`` (one page, plainly)."""
    words = array("I", page)
    words[2] &= 0xFFFF0000  # pd_checksum is the low half of the third word (little-endian)
    sums = list(BASE_OFFSETS)
    for i in range(ROWS + 2):
        for j in range(N_SUMS):
            t = sums[j] ^ (words[i * N_SUMS + j] if i < ROWS else 0)
            sums[j] = ((t * FNV_PRIME) & 0xFFFFFFFF) ^ (t >> 17)
    folded = 0
    for value in sums:
        folded ^= value
    return ((folded ^ blkno) & 0xFFFFFFFF) % 65535 + 1


def page_checksums(buf, first_blkno: int) -> list:
    """Checksums of the whole pages in ``buf`` (a multiple of BLCKSZ, little-endian host), block numbers from ``first_blkno``."""
    pages = len(buf) // BLCKSZ
    if pages == 0:
        return []
    src = memoryview(buf)[: pages * BLCKSZ].cast("I")
    slots = bytearray(8 * N_SUMS * pages)
    out = memoryview(slots).cast("I")  # two words per slot: the lane's value, then zero
    lanes, mask = _start_and_mask(pages)
    words_per_page, slot_words = BLCKSZ // 4, 2 * N_SUMS
    for row in range(ROWS):
        for lane in range(N_SUMS):
            out[2 * lane :: slot_words] = src[row * N_SUMS + lane :: words_per_page]
        if row == 0:
            out[4::slot_words] = array("I", [w & 0xFFFF0000 for w in src[2::words_per_page]])
        t = lanes ^ int.from_bytes(slots, "little")
        lanes = ((t * FNV_PRIME) ^ (t >> 17)) & mask
    for _zero_round in range(2):
        lanes = ((lanes * FNV_PRIME) ^ (lanes >> 17)) & mask
    for width in (16, 8, 4, 2, 1):  # slot 0 of each page ends up holding the xor of its 32 lanes
        lanes ^= lanes >> (64 * width)
    folded = memoryview(lanes.to_bytes(8 * N_SUMS * pages, "little")).cast("I")[0::slot_words]
    return [((value ^ (first_blkno + n)) & 0xFFFFFFFF) % 65535 + 1 for n, value in enumerate(folded)]
