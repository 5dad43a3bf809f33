"""The low-level API layer without a server: label checks, preflight, start position, stop result."""

from __future__ import annotations

import base64
import datetime

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_api
from hypothesis import given
from hypothesis import strategies as st

SEG = 16 << 20


@pytest.mark.parametrize(
    "label",
    ["x", 'it\'s "q" $(id) `uname`; DROP TABLE x; --', "ünïcødé ☃", "a" * 1023, "é" * 511 + "a", "back\\slash"],
)
def test_labels_accepted(label):
    assert backup_api.check_label(label) == label


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("two\nlines", r"control character '\\n' at position 3"),
        ("cr\r", r"control character '\\r'"),
        ("tab\there", r"control character '\\t'"),
        ("nul\x00", r"control character '\\x00'"),
        ("del\x7f", r"control character '\\x7f'"),
        ("a" * 1024, "1024 bytes long; recovery reads at most 1023"),
        ("é" * 512, "1024 bytes long"),
        ("", "non-empty string"),
        (None, "non-empty string"),
    ],
)
def test_labels_refused(label, message):
    with pytest.raises(PgBackupError, match=message):
        backup_api.check_label(label)


@given(st.text(min_size=1, max_size=300))
def test_check_label_accepts_exactly_printable_short_text(label):
    printable = not any(ord(c) < 32 or ord(c) == 127 for c in label) and len(label.encode("utf-8")) <= 1023
    try:
        backup_api.check_label(label)
        accepted = True
    except PgBackupError:
        accepted = False
    assert accepted == printable


def snapshot(**overrides):
    row = {
        "server_version": "16.14",
        "server_version_num": 160014,
        "in_recovery": False,
        "system_identifier": "7000000000000000001",
        "wal_level": "replica",
        "full_page_writes": "on",
        "archive_mode": "on",
        "wal_segment_size": SEG,
        "backend_pid": 42,
        "checkpoint_lsn": "0/3000060",
        "redo_lsn": "0/3000028",
        "timeline": 1,
    }
    row.update(overrides)
    return row


def privileges(allowed):
    def query(sql, params=None):
        assert "has_function_privilege" in sql
        return [{"allowed": allowed(params[0])}]

    return query


def test_preflight_clean():
    assert backup_api.preflight(privileges(lambda s: True), snapshot()) == []


def test_preflight_reports_every_problem():
    problems = backup_api.preflight(privileges(lambda s: "stop" not in s), snapshot(wal_level="minimal", full_page_writes="off"))
    assert len(problems) == 3
    assert "wal_level is 'minimal'" in problems[0]
    assert "full_page_writes is off" in problems[1]
    assert "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean)" in problems[2]


def test_preflight_standby_wal_level_is_the_primarys_business():
    assert backup_api.preflight(privileges(lambda s: True), snapshot(in_recovery=True, wal_level="minimal")) == []


def test_preflight_13_14_checks_the_old_functions():
    seen = []
    backup_api.preflight(privileges(lambda s: seen.append(s) or True), snapshot(server_version_num=140023))
    assert seen == ["pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)"]


def test_preflight_refuses_12():
    problems = backup_api.preflight(privileges(lambda s: True), snapshot(server_version="12.20", server_version_num=120020))
    assert "not supported" in problems[0]


@pytest.mark.parametrize(
    ("version", "function"), [(130023, "pg_start_backup(%s, %s, false)"), (150018, "pg_backup_start(%s, %s)"), (180004, "pg_backup_start(%s, %s)")]
)
def test_start_never_exclusive(version, function):
    calls = []

    def query(sql, params=None):
        calls.append((sql, params))
        return [{"lsn": "0/5000028", "at": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)}]

    result = backup_api.start(query, label="l'x", fast=True, version_num=version)
    assert function in calls[0][0] and calls[0][1] == ("l'x", True), "the label is a bound parameter"
    assert result["start_lsn"] == "0/5000028" and result["started_at"] == "2026-01-02T00:00:00+00:00"


@pytest.mark.parametrize(("version", "function"), [(140023, "pg_stop_backup(false, %s)"), (170010, "pg_backup_stop(%s)")])
def test_stop_function_by_version(version, function):
    def query(sql, params=None):
        assert function in sql and params == (False,)
        return [{"lsn": "0/6000100", "labelfile": memoryview(b"L\n"), "spcmapfile": b"", "at": None}]

    answer = backup_api.stop(query, wait_for_archive=False, version_num=version)
    assert answer["labelfile"] == b"L\n" and answer["spcmapfile"] == b""


def test_start_position_prefers_the_reading_whose_redo_is_the_start():
    before = snapshot(redo_lsn="0/2000028", checkpoint_lsn="0/2000060", timeline=1)
    after = snapshot(redo_lsn="0/3000028", checkpoint_lsn="0/3000060", timeline=2)
    assert backup_api.start_position(before, after, "0/2000028", SEG) == {
        "start_timeline": 1,
        "timeline": 1,
        "checkpoint_lsn": "0/2000060",
        "start_wal_file": "000000010000000000000002",
    }
    assert backup_api.start_position(before, after, "0/3000028", SEG)["checkpoint_lsn"] == "0/3000060"


def test_start_position_unknown_checkpoint():
    position = backup_api.start_position(snapshot(redo_lsn="0/1000028"), snapshot(redo_lsn="0/4000028", timeline=3), "0/3000028", SEG)
    assert position == {"start_timeline": 3, "timeline": 3, "checkpoint_lsn": None, "start_wal_file": "000000030000000000000003"}


def test_stop_result_is_byte_exact_and_names_the_file_before_the_stop():
    label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: caf\xe9\n".encode("latin-1")
    spcmap = b"16385 /srv/t\\ s\n"
    started = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    answer = {"lsn": "0/3000000", "labelfile": label, "spcmapfile": spcmap, "at": started + datetime.timedelta(seconds=90.5)}
    notices = ["NOTICE: base backup done, waiting for required WAL segments to be archived", "NOTICE: something else"]
    result = backup_api.stop_result(answer, timeline=1, seg_size=SEG, started_at=started, notices=notices)
    assert result["stop_wal_file"] == "000000010000000000000002", "0/3000000 is the first byte of segment 3: the stop is in 2"
    assert base64.b64decode(result["backup_label_base64"]) == label and base64.b64decode(result["tablespace_map_base64"]) == spcmap
    assert "\ufffd" in result["backup_label"], "text output replaces what is not UTF-8; the base64 field keeps it"
    assert result["duration_seconds"] == 90.5
    assert result["archive_wait_notices"] == notices[:1]


@pytest.mark.parametrize(
    ("sysid", "timeline", "message"),
    [
        (None, None, None),
        ("7000000000000000001", 1, None),
        ("7000000000000000002", None, "system identifier 7000000000000000001, but the standby .* has 7000000000000000002"),
        (None, 2, "on timeline 1, but the standby .* is on timeline 2"),
    ],
)
def test_check_expected(sysid, timeline, message):
    found = backup_api.check_expected(snapshot(), system_identifier=sysid, timeline=timeline)
    if message is None:
        assert found is None
    else:
        assert found is not None and __import__("re").search(message, found)


def test_check_expected_takes_the_signed_sql_form_and_the_unsigned_form_as_one_identifier():
    # An identifier past 2**63: SQL shows it negative, pg_controldata (and backup_start's result) unsigned.
    unsigned = (1 << 63) + 5
    signed = dict(snapshot(), system_identifier=str(unsigned - (1 << 64)))
    assert backup_api.check_expected(signed, system_identifier=str(unsigned), timeline=None) is None
    assert "they are not the same cluster" in backup_api.check_expected(signed, system_identifier=str(unsigned + 1), timeline=None)


def _conflicting(failures: int, sqlstate: str = "40001"):
    """A query whose first ``failures`` starts are cancelled by the server with ``sqlstate``."""
    calls = []

    def query(sql, params=None):
        calls.append(sql)
        if len(calls) <= failures:
            raise PgBackupError("query failed on host=db2 port=5433: canceling statement due to conflict with recovery", sqlstate=sqlstate)
        return [{"lsn": "0/5000028", "at": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)}]

    return query, calls


def test_start_on_a_standby_is_tried_again_after_a_recovery_conflict():
    query, calls = _conflicting(2)
    result = backup_api.start(query, label="l", fast=False, version_num=180004, in_recovery=True, target="host=db2 port=5433")
    assert result["start_lsn"] == "0/5000028" and result["start_attempts"] == 3 and len(calls) == 3


def test_start_on_a_standby_gives_up_saying_why_and_what_to_set():
    query, calls = _conflicting(backup_api.START_ATTEMPTS)
    with pytest.raises(PgBackupError) as caught:
        backup_api.start(query, label="l", fast=False, version_num=150018, in_recovery=True, target="host=db2 port=5433")
    message = caught.value.message
    assert len(calls) == backup_api.START_ATTEMPTS
    needles = ("host=db2 port=5433", "3 times", "conflict with recovery", "fast: false", "standby_backup_fast", "hot_standby_feedback", "No backup was started")
    for needle in needles:
        assert needle in message, needle
    assert caught.value.details["sqlstate"] == "40001"


@pytest.mark.parametrize(("in_recovery", "sqlstate"), [(False, "40001"), (True, "57014")])
def test_start_is_not_retried_on_a_primary_nor_for_other_errors(in_recovery, sqlstate):
    query, calls = _conflicting(1, sqlstate)
    with pytest.raises(PgBackupError, match="conflict with recovery"):
        backup_api.start(query, label="l", fast=True, version_num=180004, in_recovery=in_recovery, target="t")
    assert len(calls) == 1


def test_one_server_process_for_the_whole_session_is_no_pooler_problem():
    assert backup_api.pooled_session_problem("db1:6432", 101, 102, 101) is None


def test_transaction_pooling_is_refused_with_what_was_seen():
    shared = backup_api.pooled_session_problem("db1:6432", 101, 101, 101)
    assert shared.startswith("the connection to db1:6432 goes through a connection pooler in transaction or statement pooling mode")
    assert "two connections were both served by server process 101" in shared and "pool_mode = session" in shared
    moved = backup_api.pooled_session_problem("db1:6432", 101, 102, 103)
    assert "one connection was served by server process 101, then by 103" in moved


def test_the_stop_recheck_names_both_server_processes():
    assert backup_api.moved_session_problem("db1:6432", 7, 7) is None
    message = backup_api.moved_session_problem("db1:6432", 7, 9)
    assert "now runs in server process 9, but the backup started in process 7" in message and "pg_terminate_backend(7)" in message


def test_a_refused_second_connection_leaves_the_own_process_check():
    assert backup_api.pooled_session_problem("db1:6432", 101, None, 101) is None
    assert "then by 102" in backup_api.pooled_session_problem("db1:6432", 101, None, 102)
