"""The cluster_info module's thin layer: argument spec, one PgBackupError caught into fail_json, data_dir mode."""

from __future__ import annotations

import json

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.modules import cluster_info

from .module_runner import run_main


def _run(monkeypatch, capsys, args: dict) -> dict:
    return run_main(cluster_info.main, monkeypatch, capsys, args)


class _Session:
    def __init__(self) -> None:
        self.queries = ["SELECT 1"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_connected_facts_and_application_name(monkeypatch, capsys):
    seen = {}

    def fake_connect(params, *, application_name):
        seen.update(params=dict(params), application_name=application_name)
        return _Session()

    monkeypatch.setattr(cluster_info, "connect", fake_connect)
    monkeypatch.setattr(cluster_info, "server_facts", lambda session, warn: {"source": "server", "system_identifier": 1})
    result = _run(monkeypatch, capsys, {"login_host": "db1", "login_password": "top-secret"})
    assert result["changed"] is False and result["cluster"] == {"source": "server", "system_identifier": 1}
    assert result["queries"] == ["SELECT 1"]
    assert seen["application_name"] == "pgbackup.lowlevel/cluster_info"
    assert seen["params"]["login_port"] == 5432 and seen["params"]["login_password"] == "top-secret"
    assert "top-secret" not in json.dumps(result)


def test_a_pgbackup_error_becomes_fail_json_with_details(monkeypatch, capsys):
    def fail(params, *, application_name):
        raise PgBackupError("cannot connect to PostgreSQL at host=db1: refused; check that the server runs", sqlstate=None)

    monkeypatch.setattr(cluster_info, "connect", fail)
    result = _run(monkeypatch, capsys, {"login_host": "db1"})
    assert result["failed"] is True
    assert result["msg"] == "cannot connect to PostgreSQL at host=db1: refused; check that the server runs"
    assert "sqlstate" in result


def test_data_dir_mode_does_not_connect_even_with_connection_options(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cluster_info, "connect", pytest.fail)
    monkeypatch.setattr(cluster_info, "data_dir_facts", lambda path, warn: {"source": "data_dir", "data_directory": path})
    result = _run(monkeypatch, capsys, {"data_dir": str(tmp_path), "login_host": "db1", "_ansible_check_mode": True})
    assert result["cluster"] == {"source": "data_dir", "data_directory": str(tmp_path)}
    assert result["queries"] == [] and result["changed"] is False
