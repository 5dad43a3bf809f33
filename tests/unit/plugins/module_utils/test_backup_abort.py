"""backup_abort: which processes are an interrupted run's copy (real processes, each in a session of its own), which
keepers it ends, what it reports on an empty state_dir."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import backup_abort, copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import keeper_files

SLEEP = "import time; time.sleep(60)"


def _session(*extra: str) -> subprocess.Popen:
    """A process in a session of its own whose command line carries ``extra`` (as async_wrapper's and rsync's do)."""
    return subprocess.Popen([sys.executable, "-c", SLEEP, *extra], start_new_session=True)


@pytest.fixture
def procs():
    started: list = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _wait_listed(dest, count: int) -> list:
    deadline = time.monotonic() + 5
    while True:
        jobs = backup_abort.find_copies(str(dest))
        if len(jobs) >= count or time.monotonic() > deadline:
            return jobs
        time.sleep(0.05)


def test_an_async_copy_job_into_dest_is_found_and_killed(tmp_path, procs):
    dest = tmp_path / "copy"
    dest.mkdir()
    ours = _session("/tmp/x/AnsiballZ_async_wrapper.py", "j4242", "86400", "/tmp/x/AnsiballZ_datadir_copy.py", f"{dest}/")
    procs.append(ours)
    jobs = _wait_listed(dest, 1)
    assert [j["jid"] for j in jobs] == ["j4242"] and ours.pid in jobs[0]["pids"], jobs
    killed = backup_abort.kill_job(jobs[0], grace=2)
    assert ours.pid in killed
    assert ours.wait(timeout=5) != 0
    assert backup_abort.find_copies(str(dest)) == []


def test_what_is_not_our_copy_is_left_alone(tmp_path, procs):
    """Negative controls: an async job into another destination, a copy that is no async job, an async job that is not
    datadir_copy, and a destination whose name only starts like ours."""
    dest = tmp_path / "copy"
    dest.mkdir()
    others = [
        _session("/tmp/x/AnsiballZ_async_wrapper.py", "j1", "60", "/tmp/x/AnsiballZ_datadir_copy.py", f"{tmp_path / 'other'}/"),
        _session("/tmp/x/AnsiballZ_datadir_copy.py", f"{dest}/"),
        _session("/tmp/x/AnsiballZ_async_wrapper.py", "j2", "60", "/tmp/x/AnsiballZ_command.py", f"{dest}/"),
        _session("/tmp/x/AnsiballZ_async_wrapper.py", "j3", "60", "/tmp/x/AnsiballZ_datadir_copy.py", f"{dest}-2/"),
    ]
    procs.extend(others)
    time.sleep(0.3)
    assert backup_abort.find_copies(str(dest)) == []
    assert all(p.poll() is None for p in others)


def test_nothing_to_end_in_an_empty_or_missing_state_dir(tmp_path):
    result = backup_abort.abort(state_dir=str(tmp_path / "none"), backup_id=None, dest=str(tmp_path / "copy"))
    assert result["changed"] is False and result["backup_ids"] == [] and result["copies"] == [] and result["aborted"] == []
    assert result["dest_written"] is False


def test_keepers_that_hold_nothing_are_not_aborted_but_their_slots_are_named(tmp_path):
    state_dir = tmp_path / "keepers"
    state_dir.mkdir(mode=0o700)
    for name, files in (("20261202T010000Z-aaaaaa", {keeper_files.STOPPED: {}}), ("20261202T010000Z-bbbbbb", {keeper_files.ABORTED: {"reason": "x"}})):
        directory = state_dir / name
        directory.mkdir(mode=0o700)
        keeper_files.write_json(str(directory), keeper_files.STARTED, {"server_role": "primary"})
        for file, data in files.items():
            keeper_files.write_json(str(directory), file, data)
    gone = state_dir / "20261202T010000Z-cccccc"
    gone.mkdir(mode=0o700)
    keeper_files.write_json(str(gone), keeper_files.STARTED, {"server_role": "primary"})  # no socket: the keeper is gone
    dest = tmp_path / "copy"
    dest.mkdir()
    copy_state.write_marker(str(dest), "x")
    result = backup_abort.abort(state_dir=str(state_dir), backup_id=None, dest=str(dest))
    assert [k["state"] for k in result["keepers"]] == ["stopped", "aborted", "gone"]
    assert result["aborted"] == [] and result["changed"] is False
    assert result["slot_names"] == ["pgbackup_20261202t010000z_aaaaaa", "pgbackup_20261202t010000z_bbbbbb", "pgbackup_20261202t010000z_cccccc"]
    assert result["dest_written"] is True and result["dest_marked"] is True
    one = backup_abort.abort(state_dir=str(state_dir), backup_id="20261202T010000Z-dddddd", dest=None)
    assert [k["state"] for k in one["keepers"]] == ["unknown"] and one["slot_names"] == ["pgbackup_20261202t010000z_dddddd"]
    assert result["snapshot_sets"] == [] and one["snapshot_sets"] == [], "no run recorded a snapshot set"


def _stopped_backup(state_dir, name: str):
    directory = state_dir / name
    directory.mkdir(mode=0o700, parents=True)
    keeper_files.write_json(str(directory), keeper_files.STARTED, {"server_role": "standby"})
    keeper_files.write_json(str(directory), keeper_files.STOPPED, {})  # snapshot mode: the copy runs after the stop
    return directory


SET = {"name": "pgbackup-20261202T010000Z-aaaaaa", "host": "db2", "provider": "btrfs", "paths": ["/srv/ts1", "/srv/pg/data"]}


def test_a_recorded_snapshot_set_is_returned_for_its_release(tmp_path):
    state_dir = tmp_path / "keepers"
    keeper_files.write_json(str(_stopped_backup(state_dir, "20261202T010000Z-aaaaaa")), keeper_files.SNAPSHOT_SET, SET)
    _stopped_backup(state_dir, "20261202T010000Z-bbbbbb")  # a copy-method backup: no set
    result = backup_abort.abort(state_dir=str(state_dir), backup_id=None, dest=None)
    assert result["snapshot_sets"] == [dict(SET, backup_id="20261202T010000Z-aaaaaa")]
    one = backup_abort.abort(state_dir=str(state_dir), backup_id="20261202T010000Z-bbbbbb", dest=None, check_mode=True)
    assert one["snapshot_sets"] == []


@pytest.mark.parametrize(
    "damage",
    [{"paths": []}, {"paths": ["relative/data"]}, {"paths": "/srv/pg/data"}, {"host": ""}, {"name": None}, {"provider": 3}],
    ids=["no-paths", "relative-path", "paths-not-a-list", "no-host", "no-name", "provider-not-a-string"],
)
def test_a_damaged_snapshot_set_record_is_refused_by_name(tmp_path, damage):
    state_dir = tmp_path / "keepers"
    directory = _stopped_backup(state_dir, "20261202T010000Z-aaaaaa")
    keeper_files.write_json(str(directory), keeper_files.SNAPSHOT_SET, dict(SET, **damage))
    with pytest.raises(PgBackupError) as caught:
        backup_abort.abort(state_dir=str(state_dir), backup_id=None, dest=None)
    message = caught.value.message
    assert str(directory / keeper_files.SNAPSHOT_SET) in message and "pgbackup-20261202T010000Z-aaaaaa" in message and "action=release" in message
