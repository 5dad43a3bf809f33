"""The replay_wait module's thin layer: options reach the waiter, check mode, data_dir, failures with details, no password."""

from __future__ import annotations

import json
from typing import ClassVar

import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.modules import replay_wait

from .module_runner import run_main


def _run(monkeypatch, capsys, args: dict) -> dict:
    return run_main(replay_wait.main, monkeypatch, capsys, args)


class _Query:
    instances: ClassVar[list] = []

    def __init__(self, params, *, application_name):
        self.params = dict(params)
        self.application_name = application_name
        self.queries = ["CHECKPOINT"]
        self.closed = False
        _Query.instances.append(self)

    def close(self):
        self.closed = True


def _fake(monkeypatch, outcome):
    seen: dict = {}
    _Query.instances = []

    class Waiter:
        def __init__(self, query, **kw):
            seen.update(kw, query=query)

        def wait(self):
            if isinstance(outcome, Exception):
                raise outcome
            return dict(outcome)

    monkeypatch.setattr(replay_wait, "ServerQuery", _Query)
    monkeypatch.setattr(replay_wait, "ReplayWaiter", Waiter)
    return seen


def test_options_reach_the_waiter_and_the_result_comes_back(monkeypatch, capsys):
    seen = _fake(monkeypatch, {"reached": True, "resumed_replay": False, "replay_lsn": "0/5000100"})
    result = _run(
        monkeypatch,
        capsys,
        {"login_host": "db2", "login_password": "top-secret", "target_lsn": "0/5000028", "restartpoint": True,
         "expect_system_identifier": "7311234567890123456", "expect_timeline": 1, "timeout": 60, "stall_timeout": 10, "poll_interval": 0.5},
    )  # fmt: skip
    assert result["changed"] is False and result["replay_lsn"] == "0/5000100" and result["queries"] == ["CHECKPOINT"]
    assert seen["target_lsn"] == "0/5000028" and seen["restartpoint"] is True and seen["mode"] == "target_lsn"
    assert seen["expect_system_identifier"] == "7311234567890123456" and seen["expect_timeline"] == 1
    assert seen["timeout"] == 60.0 and seen["stall_timeout"] == 10.0 and seen["poll_interval"] == 0.5
    assert seen["check_mode"] is False and seen["probe_files"] is None
    query = _Query.instances[0]
    assert query.application_name == "pgbackup.lowlevel/replay_wait" and query.closed
    assert "top-secret" not in json.dumps(result)


def test_resuming_replay_is_a_change(monkeypatch, capsys):
    _fake(monkeypatch, {"reached": True, "resumed_replay": True})
    assert _run(monkeypatch, capsys, {"target_lsn": "0/1", "resume_paused": True})["changed"] is True


def test_check_mode_is_passed(monkeypatch, capsys):
    seen = _fake(monkeypatch, {"reached": False, "resumed_replay": False})
    result = _run(monkeypatch, capsys, {"target_lsn": "0/1", "_ansible_check_mode": True})
    assert seen["check_mode"] is True and result["changed"] is False


def test_data_dir_gives_a_file_probe_in_consistent_mode(monkeypatch, capsys, tmp_path):
    seen = _fake(monkeypatch, {"reached": True, "resumed_replay": False})
    _run(monkeypatch, capsys, {"mode": "consistent", "data_dir": str(tmp_path)})
    probe = seen["probe_files"]()
    assert probe.running is False and probe.min_recovery_point is None  # no postmaster.pid, no pg_control


def test_data_dir_outside_consistent_mode_is_refused(monkeypatch, capsys, tmp_path):
    _fake(monkeypatch, {"reached": True, "resumed_replay": False})
    result = _run(monkeypatch, capsys, {"target_lsn": "0/1", "data_dir": str(tmp_path)})
    assert result["failed"] is True and "data_dir only goes with mode=consistent" in result["msg"]


def test_a_failure_keeps_its_details_and_the_queries(monkeypatch, capsys):
    _fake(monkeypatch, PgBackupError("replay_wait (target_lsn): paused (target 0/1, last replayed 0/0, waited 0.0 s)", reason="paused", replay_lsn="0/0"))
    result = _run(monkeypatch, capsys, {"target_lsn": "0/1", "login_password": "top-secret"})
    assert result["failed"] is True and result["reason"] == "paused" and result["replay_lsn"] == "0/0"
    assert result["queries"] == ["CHECKPOINT"] and _Query.instances[0].closed


def test_documented_options_match_the_argument_spec():
    documented = yaml.safe_load(replay_wait.DOCUMENTATION)["options"]
    assert set(documented) == set(replay_wait.ARGS)
    for name, spec in replay_wait.ARGS.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert documented[name].get("choices") == spec.get("choices"), name
    yaml.safe_load(replay_wait.EXAMPLES)
    yaml.safe_load(replay_wait.RETURN)
