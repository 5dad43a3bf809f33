from __future__ import annotations

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_label import (
    KEY_ORDER,
    BackupLabel,
    build_backup_label,
    parse_backup_label,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from hypothesis import given
from hypothesis import strategies as st

from . import core_vectors

MB = 1 << 20
LABEL_15 = (
    "START WAL LOCATION: 0/2500028 (file 000000010000000000000025)\n"
    "CHECKPOINT LOCATION: 0/257AE28\n"
    "BACKUP METHOD: streamed\n"
    "BACKUP FROM: standby\n"
    "START TIME: 2026-11-22 19:45:49 UTC\n"
    "LABEL: nightly: with colons\n"
    "START TIMELINE: 1\n"
)
HISTORY_16 = (
    "START WAL LOCATION: 0/E00028 (file 00000001000000000000000E)\n"
    "STOP WAL LOCATION: 0/1000000 (file 000000010000000000000010)\n"
    "CHECKPOINT LOCATION: 0/E00060\n"
    "BACKUP METHOD: streamed\n"
    "BACKUP FROM: primary\n"
    "START TIME: 2026-11-22 22:28:27 UTC\n"
    "LABEL: x\n"
    "START TIMELINE: 1\n"
    "STOP TIME: 2026-11-22 22:28:29 UTC\n"
    "STOP TIMELINE: 1\n"
)
INCREMENTAL = LABEL_15 + "INCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\n"
LABELS = core_vectors.labels()


def refusal(text, **kw) -> str:
    with pytest.raises(PgBackupError) as err:
        parse_backup_label(text, **kw)
    return str(err.value)


# --- real labels of PostgreSQL 13-18 ------------------------------------------------------------------------


@pytest.mark.parametrize(("major", "vector"), LABELS, ids=core_vectors.ids(LABELS, "kind"))
def test_real_labels_round_trip_byte_for_byte(major, vector):
    seg_size = core_vectors.expected(major)["seg_size"]
    label = parse_backup_label(vector["backup_label"], seg_size=seg_size)
    assert label.format() == vector["backup_label"]
    assert label.format().encode() == vector["backup_label"].encode()
    assert label.start_lsn == parse_lsn(vector["start_lsn"])  # what pg_backup_start returned
    assert label.start_timeline == 1 and label.start_wal_file.startswith("00000001")
    assert not label.is_history_file and not label.is_incremental
    method = "pg_start_backup" if vector["kind"] == "exclusive" else "streamed"
    assert label.backup_method == method and label.backup_end_required == (method == "streamed")
    assert label.backup_from == ("standby" if vector["kind"] == "standby" else "primary")
    assert label.from_standby == (vector["kind"] == "standby")
    assert label.backup_from_raw == ("standby" if vector["kind"] == "standby" else "master" if major == 13 else "primary")
    assert label.checkpoint_lsn >= label.start_lsn
    assert label.label.startswith("vec")


HISTORIES = [v for v in LABELS if v[1].get("backup_history")]
NON_EXCLUSIVE = [v for v in LABELS if v[1]["kind"] != "exclusive"]


@pytest.mark.parametrize(("major", "vector"), HISTORIES, ids=core_vectors.ids(HISTORIES, "kind"))
def test_real_backup_history_files(major, vector):
    seg_size = core_vectors.expected(major)["seg_size"]
    history = parse_backup_label(vector["backup_history"], seg_size=seg_size)
    assert history.format() == vector["backup_history"]
    assert history.is_history_file
    assert history.stop_lsn == parse_lsn(vector["stop_lsn"]) and history.stop_timeline == 1
    assert history.start_lsn == parse_lsn(vector["start_lsn"])
    label = parse_backup_label(vector["backup_label"])
    assert [line for line in history.lines if line[0] in dict(label.lines)] == list(label.lines)


@pytest.mark.parametrize(("major", "vector"), NON_EXCLUSIVE, ids=core_vectors.ids(NON_EXCLUSIVE, "kind"))
def test_build_reproduces_real_labels(major, vector):
    real = parse_backup_label(vector["backup_label"])
    built = build_backup_label(
        start_lsn=real.start_lsn,
        start_tli=real.start_timeline,
        checkpoint_lsn=real.checkpoint_lsn,
        seg_size=core_vectors.expected(major)["seg_size"],
        start_time=real.start_time,
        label=real.label,
        backup_from=real.backup_from,
        major_version=major,
    )
    assert built.format() == vector["backup_label"]
    if vector.get("backup_history"):
        history = parse_backup_label(vector["backup_history"])
        built = build_backup_label(
            start_lsn=real.start_lsn,
            start_tli=1,
            checkpoint_lsn=real.checkpoint_lsn,
            seg_size=core_vectors.expected(major)["seg_size"],
            start_time=real.start_time,
            label=real.label,
            backup_from=real.backup_from,
            major_version=major,
            stop_lsn=history.stop_lsn,
            stop_tli=1,
            stop_time=history.stop_time,
        )
        assert built.format() == vector["backup_history"]


# --- fields -----------------------------------------------------------------------------------------


def test_parse_a_standby_label():
    label = parse_backup_label(LABEL_15, seg_size=MB)  # the reference's label, from a 1 MB-segment cluster
    assert label.start_lsn == 0x2500028 and label.start_wal_file == "000000010000000000000025"
    assert label.checkpoint_lsn == 0x257AE28
    assert label.backup_from == "standby" and label.label == "nightly: with colons"
    assert label.start_time == "2026-11-22 19:45:49 UTC"
    assert label.get("LABEL") == "nightly: with colons" and label.get("STOP TIME") is None
    assert label.as_dict()["start_lsn"] == "0/2500028" and label.as_dict()["stop_lsn"] is None


def test_parse_a_backup_history_file():
    history = parse_backup_label(HISTORY_16, seg_size=MB)
    assert history.is_history_file
    assert history.stop_lsn == 0x1000000 and history.stop_wal_file == "000000010000000000000010"
    assert history.stop_time == "2026-11-22 22:28:29 UTC" and history.stop_timeline == 1
    assert history.as_dict()["stop_lsn"] == "0/1000000"


def test_stop_file_on_a_boundary_may_name_either_segment():
    # 13-15 name the segment of stop-1, 16+ the segment of stop
    old_style = HISTORY_16.replace("(file 000000010000000000000010)", "(file 00000001000000000000000F)")
    assert parse_backup_label(old_style, seg_size=MB).stop_wal_file.endswith("F")
    wrong = HISTORY_16.replace("(file 000000010000000000000010)", "(file 000000010000000000000011)")
    assert "STOP WAL LOCATION 0/1000000 is not in its file" in refusal(wrong, seg_size=MB)


def test_label_without_optional_lines_like_pg_rewind_writes():
    text = (
        "START WAL LOCATION: 0/3000028 (file 000000020000000000000003)\n"
        "CHECKPOINT LOCATION: 0/3000060\n"
        "BACKUP METHOD: pg_rewind\n"
        "BACKUP FROM: standby\n"
        "START TIME: 2026-11-22 19:45:49 UTC\n"
    )
    label = parse_backup_label(text)
    assert label.start_timeline == 2 and label.label is None and label.format() == text
    assert not label.backup_end_required


def test_minimal_label():
    text = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000060\n"
    label = parse_backup_label(text)
    assert label.backup_method is None and label.backup_from is None and label.format() == text


def test_incremental_labels_are_refused_unless_allowed():
    message = refusal(INCREMENTAL)
    assert "incremental backup" in message and "pg_combinebackup" in message
    label = parse_backup_label(INCREMENTAL, allow_incremental=True)
    assert label.is_incremental and label.incremental_from_lsn == 0x2000028 and label.incremental_from_tli == 1
    assert label.format() == INCREMENTAL


def test_bytes_are_accepted():
    assert parse_backup_label(LABEL_15.encode()).format() == LABEL_15


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "backup_label is empty"),
        (None, "backup_label is empty"),
        (LABEL_15[:-1], "does not end with a newline"),
        (LABEL_15 + "\n", "line 8: ''"),
        ("\n" + LABEL_15, "line 1: ''"),
        (LABEL_15.replace("CHECKPOINT LOCATION: 0/257AE28\n", ""), "must start with the lines START WAL LOCATION, CHECKPOINT LOCATION"),
        (LABEL_15.split("\n", 1)[1], "must start with the lines"),
        (LABEL_15 + "LABEL: again\n", "LABEL comes after START TIMELINE"),
        (LABEL_15.replace("START TIMELINE: 1\n", "START TIMELINE: 1\nSTART TIMELINE: 1\n"), "START TIMELINE appears twice"),
        (LABEL_15.replace("BACKUP METHOD: streamed\nBACKUP FROM: standby\n", "BACKUP FROM: standby\nBACKUP METHOD: streamed\n"), "BACKUP METHOD comes after"),
        (LABEL_15 + "SOMETHING ELSE: x\n", "line 8: 'SOMETHING ELSE: x'"),
        (LABEL_15.replace("LABEL: nightly: with colons\n", "LABEL: two\nlines\n"), "a LABEL containing a newline"),
        (LABEL_15.replace("START WAL LOCATION: 0/2500028", "START WAL LOCATION: 0/25G0028"), "START WAL LOCATION is '0/25G0028"),
        (LABEL_15.replace("(file 000000010000000000000025)", "(file 000000010000000000000025"), "expected 'X/X \\(file"),
        (LABEL_15.replace("(file 000000010000000000000025)", "(file 00000001000000000000025)"), "expected 'X/X \\(file"),
        (LABEL_15.replace("(file 000000010000000000000025)", "(file 00000001000000000000002a)"), "expected 'X/X \\(file"),
        (LABEL_15.replace("(file 000000010000000000000025)", "(file 000000000000000000000025)"), "timeline 0"),
        (LABEL_15.replace("CHECKPOINT LOCATION: 0/257AE28", "CHECKPOINT LOCATION: 0/257AE28 "), "CHECKPOINT LOCATION '0/257AE28 ' is not a valid LSN"),
        (LABEL_15.replace("START TIMELINE: 1", "START TIMELINE: 2"), "START TIMELINE is 2 but the start file 000000010000000000000025 is on timeline 1"),
        (LABEL_15.replace("START TIMELINE: 1", "START TIMELINE: one"), "START TIMELINE is 'one'"),
        (LABEL_15.replace("START TIMELINE: 1", "START TIMELINE: 0"), "START TIMELINE is '0'"),
        (LABEL_15.replace("START TIMELINE: 1", "START TIMELINE: 99999999999"), "START TIMELINE is '99999999999'"),
        (LABEL_15.replace("BACKUP FROM: standby", "BACKUP FROM: replica"), "BACKUP FROM is 'replica', expected primary, master or standby"),
        (LABEL_15.replace("BACKUP METHOD: streamed", "BACKUP METHOD: rsync"), "BACKUP METHOD is 'rsync'"),
        (LABEL_15.replace("\n", "\r\n"), "START WAL LOCATION is"),
        (LABEL_15.replace("LABEL: ", "LABEL:"), "line 6: 'LABEL:nightly"),
        (HISTORY_16.replace("STOP WAL LOCATION: 0/1000000", "STOP WAL LOCATION: 0/100"), "STOP WAL LOCATION 0/100 is before the start 0/E00028"),
        (HISTORY_16.replace("STOP TIMELINE: 1", "STOP TIMELINE: 2"), "STOP TIMELINE is 2 but the stop file"),
    ],
)
def test_refusals(text, message):
    import re

    assert re.search(message, refusal(text))


def test_segment_size_checks():
    assert parse_backup_label(LABEL_15, seg_size=MB).start_wal_file == "000000010000000000000025"
    message = refusal(LABEL_15, seg_size=16 * MB)
    assert "0/2500028 is not in its file 000000010000000000000025 with 16777216-byte segments" in message
    assert "expected file 000000010000000000000002" in message
    assert parse_backup_label(LABEL_15.replace("000000010000000000000025", "000000010000000000000002"), seg_size=16 * MB)
    assert "impossible with" in refusal(LABEL_15, seg_size=1 << 30)
    assert "power of two" in refusal(LABEL_15, seg_size=12345)


def test_line_numbers_in_details():
    with pytest.raises(PgBackupError) as err:
        parse_backup_label(LABEL_15 + "BOGUS: 1\n")
    assert err.value.details["line"] == 8


# --- building and round trips --------------------------------------------------------------------------


def test_build_for_13_writes_master():
    built = build_backup_label(start_lsn=0x3000028, start_tli=1, checkpoint_lsn=0x3000060, seg_size=16 * MB, start_time="t", label="l", major_version=13)
    assert "BACKUP FROM: master\n" in built.format() and built.backup_from == "primary"
    built = build_backup_label(start_lsn=0x3000028, start_tli=1, checkpoint_lsn=0x3000060, seg_size=16 * MB, start_time="t", label="l", major_version=14)
    assert "BACKUP FROM: primary\n" in built.format()


def test_build_stop_file_name_by_version():
    common = dict(
        start_lsn=0x2000028, start_tli=1, checkpoint_lsn=0x2000060, seg_size=16 * MB, start_time="t", label="l", stop_lsn=0x3000000, stop_tli=1, stop_time="u"
    )
    assert build_backup_label(major_version=15, **common).stop_wal_file == "000000010000000000000002"
    assert build_backup_label(major_version=16, **common).stop_wal_file == "000000010000000000000003"


def test_build_refusals():
    common = dict(start_lsn=0x2000028, start_tli=1, checkpoint_lsn=0x2000060, seg_size=16 * MB, start_time="t")
    with pytest.raises(PgBackupError, match="line break"):
        build_backup_label(label="a\nb", **common)
    with pytest.raises(PgBackupError, match="primary or standby"):
        build_backup_label(label="a", backup_from="master", **common)
    with pytest.raises(PgBackupError, match="together"):
        build_backup_label(label="a", stop_lsn=0x3000000, **common)


def test_build_incremental():
    built = build_backup_label(
        start_lsn=0x2000028,
        start_tli=1,
        checkpoint_lsn=0x2000060,
        seg_size=16 * MB,
        start_time="t",
        label="l",
        incremental_from_lsn=0x1000028,
        incremental_from_tli=1,
    )
    assert built.format().endswith("START TIMELINE: 1\nINCREMENTAL FROM LSN: 0/1000028\nINCREMENTAL FROM TLI: 1\n")


def test_key_order_is_postgres_order():
    assert KEY_ORDER[:3] == ("START WAL LOCATION", "STOP WAL LOCATION", "CHECKPOINT LOCATION")
    assert KEY_ORDER[-2:] == ("INCREMENTAL FROM LSN", "INCREMENTAL FROM TLI")


label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=60)


@st.composite
def labels(draw):
    seg_size = draw(st.sampled_from([MB, 16 * MB, 1 << 30]))
    start = draw(st.integers(min_value=0, max_value=(1 << 64) - 1 - (1 << 31)))
    tli = draw(st.integers(min_value=1, max_value=0xFFFFFFFF))
    kw = dict(
        start_lsn=start,
        start_tli=tli,
        checkpoint_lsn=start + draw(st.integers(min_value=0, max_value=1 << 30)),
        seg_size=seg_size,
        start_time=draw(st.sampled_from(["2026-11-22 19:45:49 UTC", "2026-01-02 03:04:05 CET", "2026-06-30 23:59:59 +03"])),
        label=draw(st.one_of(st.none(), label_text)),
        backup_from=draw(st.sampled_from(["primary", "standby"])),
        backup_method=draw(st.sampled_from(["streamed", "pg_start_backup"])),
        major_version=draw(st.integers(min_value=13, max_value=18)),
    )
    if draw(st.booleans()):
        kw.update(stop_lsn=start + draw(st.integers(min_value=1, max_value=1 << 31)), stop_tli=tli, stop_time="2026-11-22 19:46:00 UTC")
    if draw(st.booleans()):
        kw.update(incremental_from_lsn=draw(st.integers(min_value=0, max_value=start)), incremental_from_tli=draw(st.integers(min_value=1, max_value=tli)))
    return kw


@given(labels())
def test_label_round_trip(kw):
    built = build_backup_label(**kw)
    text = built.format()
    again = parse_backup_label(text, seg_size=kw["seg_size"], allow_incremental=True)
    assert again == built and isinstance(again, BackupLabel)
    assert again.format() == text
    assert again.start_lsn == kw["start_lsn"] and again.start_timeline == kw["start_tli"] and again.label == kw["label"]
    assert again.stop_lsn == kw.get("stop_lsn")
