from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.tablespace_map import (
    escape_path,
    escape_path_13,
    format_tablespace_map,
    parse_tablespace_map,
)
from hypothesis import given
from hypothesis import strategies as st

from . import core_vectors

MAPS = [(m, v) for m, v in core_vectors.labels() if v.get("tablespace_map")]


@pytest.mark.parametrize(("major", "vector"), MAPS, ids=core_vectors.ids(MAPS, "kind"))
def test_real_maps_round_trip_byte_for_byte(major, vector):
    entries = parse_tablespace_map(vector["tablespace_map"], major_version=major)
    assert entries == [(vector["tablespace_oid"], vector["tablespace_path"])]  # the path with a space, a backslash and a newline
    assert format_tablespace_map(entries, major_version=major) == vector["tablespace_map"]


@pytest.mark.parametrize(("major", "vector"), MAPS, ids=core_vectors.ids(MAPS, "kind"))
def test_real_maps_escape_by_version(major, vector):
    text = vector["tablespace_map"]
    if major == 13:
        assert "dir\\with\\\nnewline" in text  # 13 leaves the backslash alone
        assert parse_tablespace_map(text)[0][1].endswith("dirwith\nnewline")  # 14+'s reader would lose it
    else:
        assert "dir\\\\with\\\nnewline" in text


def test_no_tablespaces():
    assert parse_tablespace_map("") == [] and format_tablespace_map([]) == ""
    assert parse_tablespace_map("", major_version=13) == [] and format_tablespace_map([], major_version=13) == ""


def test_several_lines_in_order():
    text = "16390 /srv/ts2\n16384 /srv/ts1\n"
    assert parse_tablespace_map(text) == [(16390, "/srv/ts2"), (16384, "/srv/ts1")]
    assert format_tablespace_map([(16390, "/srv/ts2"), (16384, "/srv/ts1")]) == text


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/plain", "/plain"),
        ("/with space", "/with space"),
        ("/back\\slash", "/back\\\\slash"),
        ("/new\nline", "/new\\\nline"),
        ("/carriage\rreturn", "/carriage\\\rreturn"),
        ("/all \\\n\r\\", "/all \\\\\\\n\\\r\\\\"),
        ("/trailing\\", "/trailing\\\\"),
        ("/ünïcödé", "/ünïcödé"),
        ("  leading spaces", "  leading spaces"),
        ("/tab\there", "/tab\there"),
    ],
)
def test_escaping_14_and_later(path, written):
    assert escape_path(path) == written
    text = format_tablespace_map([(16384, path)])
    assert text == f"16384 {written}\n"
    assert parse_tablespace_map(text) == [(16384, path)]


@pytest.mark.parametrize(
    ("path", "written"),
    [("/plain", "/plain"), ("/back\\slash", "/back\\slash"), ("/new\nline", "/new\\\nline"), ("/cr\rx", "/cr\\\rx"), ("/b\\\nn", "/b\\\\\nn")],
)
def test_escaping_13(path, written):
    assert escape_path_13(path) == written
    text = format_tablespace_map([(16384, path)], major_version=13)
    assert text == f"16384 {written}\n"
    assert parse_tablespace_map(text, major_version=13) == [(16384, path)]


@pytest.mark.parametrize("path", ["/ends\\", " /leading", "\t/leading"])
def test_13_cannot_carry_some_paths(path):
    with pytest.raises(PgBackupError, match="PostgreSQL 13's reader cannot get back"):
        format_tablespace_map([(16384, path)], major_version=13)
    assert parse_tablespace_map(format_tablespace_map([(16384, path)])) == [(16384, path)]  # 14+ can


def test_reading_like_recovery_does():
    # a backslash escapes any character; \r ends a line too; empty lines are skipped
    assert parse_tablespace_map("1 /a\\b\\c\n") == [(1, "/abc")]
    assert parse_tablespace_map("1 /a\r2 /b\r\n\n3 /c\n") == [(1, "/a"), (2, "/b"), (3, "/c")]
    assert parse_tablespace_map("1  /two spaces\n") == [(1, " /two spaces")]
    assert parse_tablespace_map(b"1 /bytes\n") == [(1, "/bytes")]
    raw = b"1 /latin1-\xe9\n"
    entries = parse_tablespace_map(raw)
    assert format_tablespace_map(entries).encode("utf-8", "surrogateescape") == raw


def test_reading_13():
    assert parse_tablespace_map("1 /a\\b\n", major_version=13) == [(1, "/a\\b")]
    assert parse_tablespace_map("1   /spaces skipped\n", major_version=13) == [(1, "/spaces skipped")]
    assert parse_tablespace_map("1\t/tab\n", major_version=13) == [(1, "/tab")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("16384 /a", "line 1 is not terminated"),
        ("16384 /a\n16385 /b", "line 2 is not terminated"),
        ("16384 /a\\", "not terminated"),
        ("16384 /a\\\n", "not terminated"),
        ("16384\n", "line 1: '16384'"),
        ("16384 \n", "line 1: '16384 '"),
        (" 16384 /a\n", "line 1"),
        ("abc /a\n", "line 1: 'abc /a'"),
        ("0 /a\n", "line 1: '0 /a'"),
        ("4294967296 /a\n", "line 1"),
        ("-1 /a\n", "line 1"),
        ("16384 /a\n16384 /b\n", "OID 16384 twice \\(lines 1 and 2\\)"),
        ("/a\n", "line 1"),
    ],
)
def test_refusals(text, message):
    import re

    with pytest.raises(PgBackupError) as err:
        parse_tablespace_map(text)
    assert re.search(message, str(err.value))


@pytest.mark.parametrize(
    ("text", "message"), [("16384 /a", "not terminated"), ("\n", "line 1"), ("16384\n", "line 1"), ("1 /a\n1 /b\n", "twice"), ("x /a\n", "line 1")]
)
def test_refusals_13(text, message):
    with pytest.raises(PgBackupError, match=message):
        parse_tablespace_map(text, major_version=13)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(0, "/a")], "OID 0"),
        ([(1 << 32, "/a")], "OID 4294967296"),
        ([(True, "/a")], "OID True"),
        ([("16384", "/a")], "OID '16384'"),
        ([(16384, "")], "non-empty"),
        ([(16384, None)], "non-empty"),
        ([(16384, "/a\0b")], "NUL"),
        ([(16384, "/a"), (16384, "/b")], "twice"),
        ([(16384,)], "pair"),
        (["16384 /a"], "pair"),
    ],
)
def test_format_refusals(entries, message):
    with pytest.raises(PgBackupError, match=message):
        format_tablespace_map(entries)


def test_not_text():
    with pytest.raises(PgBackupError, match="must be text"):
        parse_tablespace_map(None)


paths = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=40)
oids = st.integers(min_value=1, max_value=0xFFFFFFFF)


@given(st.lists(st.tuples(oids, paths), max_size=6, unique_by=lambda e: e[0]))
def test_round_trip_from_entries(entries):
    text = format_tablespace_map(entries)
    assert parse_tablespace_map(text) == entries
    assert format_tablespace_map(parse_tablespace_map(text)) == text
    assert text.count("\n") - sum(entry[1].count("\n") for entry in entries) == len(entries)


paths_13 = paths.filter(lambda p: not p.endswith("\\") and p[0] not in " \t\n\r\v\f")


@given(st.lists(st.tuples(oids, paths_13), max_size=6, unique_by=lambda e: e[0]))
def test_round_trip_13(entries):
    text = format_tablespace_map(entries, major_version=13)
    assert parse_tablespace_map(text, major_version=13) == entries
    assert format_tablespace_map(parse_tablespace_map(text, major_version=13), major_version=13) == text


@given(st.text(alphabet="01 9\\\n\rab/", max_size=40))
def test_parsing_any_text_either_works_or_refuses_cleanly(text):
    for major in (None, 13):
        try:
            entries = parse_tablespace_map(text, major_version=major)
        except PgBackupError:
            continue
        assert all(isinstance(oid, int) and path for oid, path in entries)
