"""The wal_retain module's thin layer: slot name from the backup id, state, check mode, failures with details."""

from __future__ import annotations

import json

import pytest
import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.modules import wal_retain

from .module_runner import run_main


def _run(monkeypatch, capsys, args: dict) -> dict:
    return run_main(wal_retain.main, monkeypatch, capsys, args)


class _Session:
    def __init__(self) -> None:
        self.queries: list = []

    def query(self, sql, params=None):
        self.queries.append(sql)
        return []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake(monkeypatch, *, present=None, absent=None):
    calls: list = []

    def connect(params, *, application_name):
        calls.append(("connect", application_name))
        return _Session()

    def fake_present(query, name, *, check_mode, required_lsn):
        query("SELECT 1")
        calls.append(("present", name, check_mode, required_lsn))
        if isinstance(present, Exception):
            raise present
        return {"slot_name": name, "restart_lsn": "0/3000028", "wal_status": "reserved", "changed": True, "created": True}

    def fake_absent(query, name, *, check_mode):
        calls.append(("absent", name, check_mode))
        return {"slot_name": name, "changed": False, "dropped": False}

    monkeypatch.setattr(wal_retain, "connect", connect)
    monkeypatch.setattr(wal_retain, "ensure_present", fake_present)
    monkeypatch.setattr(wal_retain, "ensure_absent", fake_absent)
    return calls


def test_present_from_a_backup_id(monkeypatch, capsys):
    calls = _fake(monkeypatch)
    result = _run(monkeypatch, capsys, {"backup_id": "20240501T101500-AB12", "login_password": "top-secret"})
    assert calls == [("connect", "pgbackup.lowlevel/wal_retain"), ("present", "pgbackup_20240501t101500_ab12", False, None)]
    assert result["changed"] is True and result["restart_lsn"] == "0/3000028" and result["queries"] == ["SELECT 1"]
    assert "top-secret" not in json.dumps(result)


def test_absent_by_slot_name_in_check_mode(monkeypatch, capsys):
    calls = _fake(monkeypatch)
    result = _run(monkeypatch, capsys, {"slot_name": "keep_me", "state": "absent", "_ansible_check_mode": True})
    assert calls[-1] == ("absent", "keep_me", True) and result["changed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"slot_name": "Bad-Name"}, "not a valid replication slot name"),
        ({"backup_id": "x" * 60}, "does not make a valid slot name"),
        ({"slot_name": "a", "backup_id": "b"}, "mutually exclusive"),
        ({}, "one of the following is required"),
        ({"slot_name": "a", "state": "absent", "required_lsn": "0/1"}, "required_lsn only goes with state=present"),
    ],
)
def test_refusals_before_connecting(monkeypatch, capsys, args, message):
    calls = _fake(monkeypatch)
    result = _run(monkeypatch, capsys, args)
    assert result["failed"] is True and message in result["msg"] and calls == []


def test_a_failure_keeps_its_details_and_the_queries(monkeypatch, capsys):
    _fake(monkeypatch, present=PgBackupError("all replication slots are in use", max_replication_slots=3))
    result = _run(monkeypatch, capsys, {"slot_name": "s1", "required_lsn": "0/5000028"})
    assert result["failed"] is True and result["max_replication_slots"] == 3 and result["queries"] == ["SELECT 1"]


def test_documented_options_match_the_argument_spec():
    documented = yaml.safe_load(wal_retain.DOCUMENTATION)["options"]
    assert set(documented) == set(wal_retain.ARGS)
    for name, spec in wal_retain.ARGS.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert documented[name].get("choices") == spec.get("choices"), name
    yaml.safe_load(wal_retain.EXAMPLES)
    yaml.safe_load(wal_retain.RETURN)
