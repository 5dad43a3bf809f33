from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st


def bitwise_crc32c(data: bytes) -> int:
    """The textbook bit-at-a-time CRC-32C (reflected polynomial 0x82F63B78), independent of the table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _bit in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),  # the CRC catalogue's check value for CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720 (iSCSI) B.4 test vectors
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"a", 0xC1D04330),
    ],
)
def test_known_vectors(data, crc):
    assert crc32c(data) == crc


def test_accepts_bytearray_and_memoryview():
    assert crc32c(bytearray(b"123456789")) == crc32c(memoryview(b"123456789")) == 0xE3069283


@given(st.binary(max_size=600))
def test_agrees_with_the_bitwise_definition(data):
    assert crc32c(data) == bitwise_crc32c(data)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_can_continue_over_more_bytes(a, b):
    assert crc32c(b, crc32c(a)) == crc32c(a + b)
