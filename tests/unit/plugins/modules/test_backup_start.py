"""backup_start's snapshot_set: the record is written into the backup's directory before the keeper starts the
backup, goes with the directory when the start fails, and a bad record is refused before anything is made."""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session, keeper, keeper_files
from ansible_collections.pgbackup.lowlevel.plugins.modules import backup_start

from .module_runner import run_main

RECORD = {"name": "pgbackup-b1", "host": "db2", "provider": "btrfs", "paths": ["/srv/ts1", "/srv/data"]}


def _start(tmp_path, **kwargs) -> dict:
    return backup_session.start_backup({}, backup_id="b1", label="l", fast=True, max_duration=0, state_dir=str(tmp_path), timeout=5, **kwargs)


def test_the_record_is_in_place_before_the_keeper_starts_the_backup(tmp_path, monkeypatch):
    seen = {}

    def launch(directory, main, timeout):
        seen["record"] = keeper_files.read_json(directory, keeper_files.SNAPSHOT_SET)
        seen["mode"] = stat.S_IMODE(os.stat(os.path.join(directory, keeper_files.SNAPSHOT_SET)).st_mode)
        return {"ok": True, "result": {"backup_id": "b1", "session_dir": directory}}

    monkeypatch.setattr(keeper, "launch", launch)
    assert _start(tmp_path, snapshot_set=RECORD)["changed"] is True
    assert seen == {"record": RECORD, "mode": 0o600}


def test_without_a_set_no_record_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(keeper, "launch", lambda directory, main, timeout: {"ok": True, "result": {"session_dir": directory}})
    _start(tmp_path)
    assert keeper_files.read_json(str(tmp_path / "b1"), keeper_files.SNAPSHOT_SET) is None


def test_a_failed_start_takes_the_record_with_its_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(keeper, "launch", lambda directory, main, timeout: {"ok": False, "error": "the server refused"})
    with pytest.raises(PgBackupError, match="the server refused"):
        _start(tmp_path, snapshot_set=RECORD)
    assert not (tmp_path / "b1").exists(), "nothing was snapshotted: no record may send an abort after a set"


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ({**RECORD, "paths": []}, "paths must be a non-empty list of absolute paths"),
        ({**RECORD, "paths": ["srv/data"]}, "paths must be a non-empty list of absolute paths"),
        ({k: v for k, v in RECORD.items() if k != "host"}, "host must be non-empty strings"),
        ({**RECORD, "name": ""}, "name must be non-empty strings"),
    ],
)
def test_a_bad_record_is_refused_before_anything(tmp_path, monkeypatch, capsys, record, said):
    monkeypatch.setattr(keeper, "launch", lambda *a, **k: pytest.fail("nothing may start"))
    result = run_main(backup_start.main, monkeypatch, capsys, {"backup_id": "b1", "state_dir": str(tmp_path / "keepers"), "snapshot_set": record})
    assert result["failed"] is True and said in result["msg"] and "nothing was started" in result["msg"], result["msg"]
    assert not (tmp_path / "keepers").exists()
