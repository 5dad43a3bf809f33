from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import (
    INVALID_LSN,
    LSN_MAX,
    check_lsn,
    format_lsn,
    lsn_add,
    lsn_diff,
    parse_lsn,
)
from hypothesis import given
from hypothesis import strategies as st

LSNS = st.integers(min_value=0, max_value=LSN_MAX)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/1", 1),
        ("0/2500028", 0x2500028),
        ("1/0", 1 << 32),
        ("16/B374D848", 0x16B374D848),
        ("FFFFFFFF/FFFFFFFF", LSN_MAX),
        ("0/02500028", 0x2500028),  # %X/%08X as 18 prints in places
        ("00000000/00000000", 0),
        ("a/bc", 0xA000000BC),  # pg_lsn accepts lowercase too
        ("Ab/cD", 0xAB000000CD),
    ],
)
def test_parse_lsn(text, value):
    assert parse_lsn(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "G/1",
        "1/2/3",
        "-1/0",
        "0/-1",
        "123456789/0",
        "0/123456789",
        " 0/1",
        "0/1 ",
        "0 /1",
        "0/ 1",
        "0/1\n",
        "/1",
        "1/",
        "/",
        "0x1/0",
        "+1/0",
        "1",
        "0:1",
        "\u0663/1",
    ],
)
def test_parse_lsn_refuses_malformed_text_naming_it(text):
    with pytest.raises(PgBackupError) as err:
        parse_lsn(text)
    assert repr(text) in str(err.value)
    assert "0/2500028" in str(err.value)  # shows what is expected


@pytest.mark.parametrize("value", [None, 5, 1.5, b"0/1", ["0/1"]])
def test_parse_lsn_refuses_non_text(value):
    with pytest.raises(PgBackupError, match="must be text"):
        parse_lsn(value)


def test_parse_lsn_names_the_value_in_the_message():
    with pytest.raises(PgBackupError, match=r"^stop LSN 'x' is not a valid LSN"):
        parse_lsn("x", what="stop LSN")


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0/0"), (1, "0/1"), (0x2500028, "0/2500028"), (1 << 32, "1/0"), (0xABCDEF0123, "AB/CDEF0123"), (LSN_MAX, "FFFFFFFF/FFFFFFFF")],
)
def test_format_lsn_is_postgres_text(value, text):
    assert format_lsn(value) == text


@pytest.mark.parametrize("value", [-1, LSN_MAX + 1, 1 << 70, None, "0/1", 1.0, True, False])
def test_format_lsn_refuses_out_of_range(value):
    with pytest.raises(PgBackupError, match="between 0 and 2\\^64-1"):
        format_lsn(value)


@given(LSNS)
def test_round_trip_from_integer(value):
    text = format_lsn(value)
    assert parse_lsn(text) == value
    assert text == text.upper() and text.count("/") == 1
    hi, lo = text.split("/")
    assert hi == hi.lstrip("0") or hi == "0"
    assert lo == lo.lstrip("0") or lo == "0"


@given(st.integers(min_value=0, max_value=0xFFFFFFFF), st.integers(min_value=0, max_value=0xFFFFFFFF), st.booleans(), st.booleans())
def test_round_trip_from_any_spelling(hi, lo, padded, lower):
    text = f"{hi:X}/{lo:08X}" if padded else f"{hi:X}/{lo:X}"
    if lower:
        text = text.lower()
    value = parse_lsn(text)
    assert value == hi << 32 | lo
    assert format_lsn(value) == f"{hi:X}/{lo:X}"


def test_lsn_add_and_diff():
    assert lsn_add(0x2500028, 8) == 0x2500030
    assert lsn_add(1 << 32, -1) == 0xFFFFFFFF
    assert lsn_add(0, 0) == 0
    assert lsn_diff(parse_lsn("1/0"), parse_lsn("0/FFFFFFFF")) == 1
    assert lsn_diff(parse_lsn("0/10"), parse_lsn("0/20")) == -16
    assert INVALID_LSN == 0


@pytest.mark.parametrize(("lsn", "delta"), [(LSN_MAX, 1), (0, -1), (LSN_MAX - 5, 100)])
def test_lsn_add_refuses_leaving_the_wal_space(lsn, delta):
    with pytest.raises(PgBackupError, match="out of range"):
        lsn_add(lsn, delta)


@pytest.mark.parametrize(("lsn", "delta"), [(-1, 0), (LSN_MAX + 1, 0), (0, 1.5), (0, True), (0, "1")])
def test_lsn_add_refuses_bad_arguments(lsn, delta):
    with pytest.raises(PgBackupError):
        lsn_add(lsn, delta)


@pytest.mark.parametrize(("a", "b"), [(-1, 0), (0, LSN_MAX + 1), ("0/1", 0)])
def test_lsn_diff_refuses_bad_arguments(a, b):
    with pytest.raises(PgBackupError):
        lsn_diff(a, b)


@given(LSNS, LSNS)
def test_diff_and_add_agree(a, b):
    assert lsn_add(b, lsn_diff(a, b)) == a
    assert (lsn_diff(a, b) > 0) == (a > b)


def test_check_lsn_returns_the_value():
    assert check_lsn(42) == 42
    with pytest.raises(PgBackupError):
        check_lsn(-5)
