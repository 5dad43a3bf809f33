from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_watch
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Progress
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import keeper_files


def test_progress_line_never_exceeds_the_total_and_names_the_phase():
    line = copy_watch.progress_line({"phase": "copy", "bytes_done": 495_000_000, "bytes_total": 495_500_000 - 500_000 - 1000,
                                     "files_done": 9, "files_total": 8, "rate_bytes_per_second": 1048576}, 75)  # fmt: skip
    assert "100.0%" in line and "472.1 of 472.1 MiB" in line and "8 of 8 files" in line
    assert "copying" in line and "elapsed 0:01:15" in line and "FAILED" not in line and "(done)" not in line
    half = copy_watch.progress_line({"phase": "copy", "bytes_done": 50 << 20, "bytes_total": 100 << 20, "rate_bytes_per_second": 1 << 20}, 3600)
    assert "50.0%" in half and "ETA 0:00:50" in half and "elapsed 1:00:00" in half
    assert "listing" in copy_watch.progress_line({}, 1)
    assert "fsync" in copy_watch.progress_line({"phase": "sync", "bytes_done": 1, "bytes_total": 1}, 1)


def test_keeper_lost_without_a_socket_names_the_keeper(tmp_path):
    directory = tmp_path / "b1"
    directory.mkdir(mode=0o700)
    keeper_files.write_pid(str(directory), 4242)
    reason = copy_watch.keeper_lost(str(tmp_path), "b1")
    assert "keeper of backup b1 (pid 4242) is gone" in reason


def test_keeper_lost_reports_the_recorded_cause(tmp_path):
    directory = tmp_path / "b1"
    directory.mkdir(mode=0o700)
    keeper_files.write_json(str(directory), keeper_files.ABORTED, {"reason": "the server ended the keeper's session (terminated)"})
    assert "terminated" in copy_watch.keeper_lost(str(tmp_path), "b1")


def test_a_stopped_backup_is_not_lost(tmp_path):
    directory = tmp_path / "b1"
    directory.mkdir(mode=0o700)
    keeper_files.write_json(str(directory), keeper_files.STOPPED, {"stop_lsn": "0/1"})
    assert copy_watch.keeper_lost(str(tmp_path), "b1") is None


FAKE_WRAPPER = """
import os, subprocess, sys, time
os.setsid()
subprocess.Popen(["sleep", "300"])
time.sleep(300)
"""


def test_kill_job_stops_the_whole_session_of_the_job(tmp_path):
    script = tmp_path / "AnsiballZ_async_wrapper.py"
    script.write_text(FAKE_WRAPPER)
    # A job id of this run's own: processes are found machine-wide, and two unit runs may share the machine.
    jid = str(100000000 + os.getpid())
    wrapper = subprocess.Popen([sys.executable, str(script), jid, "60"])
    try:
        deadline = time.monotonic() + 10
        while len(copy_watch._job_processes(jid + ".77")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = copy_watch._job_processes(jid + ".77")
        assert wrapper.pid in pids and len(pids) == 2
        copy_watch.kill_job(jid + ".77", grace=5)
        wrapper.wait(timeout=5)
        assert all(copy_watch._zombie(p) for p in pids)
        assert copy_watch._job_processes(str(int(jid) + 1) + ".1") == []  # another job: nothing
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


def test_one_round_waits_while_the_job_runs(tmp_path):
    (tmp_path / "9.1").write_text(json.dumps({"started": 1, "finished": 0, "ansible_job_id": "9.1"}))
    r = copy_watch.one_round(jid="9.1", async_dir=str(tmp_path), progress_file=None, state_dir=None, backup_id=None, wait=0.2)
    assert not r["finished"]


def test_one_round_returns_when_the_job_finished(tmp_path):
    # what async_wrapper leaves at the end: the module's result, no "started" (a failed copy here)
    (tmp_path / "9.1").write_text(json.dumps({"failed": True, "msg": "destination is not empty"}))
    progress = tmp_path / "p.json"
    progress.write_text(json.dumps({"phase": "done"}))
    r = copy_watch.one_round(jid="9.1", async_dir=str(tmp_path), progress_file=str(progress), state_dir=None, backup_id=None, wait=30)
    assert r["finished"] and r["progress"]["phase"] == "done"


def test_state_dir_parents_are_made_private(tmp_path):
    path = tmp_path / "home" / ".cache" / "pgbackup.lowlevel" / "keepers"
    old = os.umask(0o022)
    try:
        keeper_files.ensure_state_dir(str(path))
    finally:
        os.umask(old)
    for d in (path, path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_progress_file_is_private(tmp_path):
    path = tmp_path / ".dest.progress.json"
    old = os.umask(0o022)
    try:
        Progress(str(path), 10, 1).write(force=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_one_round_hands_back_the_jobs_result_and_removes_the_progress_file(tmp_path):
    (tmp_path / "9.2").write_text(json.dumps({"changed": True, "bytes": 123, "files": 4}))
    progress = tmp_path / "p.json"
    progress.write_text(json.dumps({"phase": "done"}))
    r = copy_watch.one_round(jid="9.2", async_dir=str(tmp_path), progress_file=str(progress), state_dir=None, backup_id=None, wait=30,
                             remove_progress_file=True)  # fmt: skip
    assert r["copy_result"] == {"changed": True, "bytes": 123, "files": 4} and r["progress"]["phase"] == "done"
    assert not progress.exists(), "the progress file goes once the copy ended"


def test_one_round_keeps_the_progress_file_unless_asked_and_while_the_job_runs(tmp_path):
    progress = tmp_path / "p.json"
    progress.write_text(json.dumps({"phase": "copy"}))
    (tmp_path / "9.3").write_text(json.dumps({"started": 1, "finished": 0}))
    copy_watch.one_round(jid="9.3", async_dir=str(tmp_path), progress_file=str(progress), state_dir=None, backup_id=None, wait=0.1, remove_progress_file=True)
    assert progress.exists(), "a running copy keeps its progress file"
    (tmp_path / "9.3").write_text(json.dumps({"bytes": 1}))
    copy_watch.one_round(jid="9.3", async_dir=str(tmp_path), progress_file=str(progress), state_dir=None, backup_id=None, wait=0.1)
    assert progress.exists()


def test_one_round_says_when_the_job_file_is_gone(tmp_path):
    r = copy_watch.one_round(jid="9.4", async_dir=str(tmp_path), progress_file=None, state_dir=None, backup_id=None, wait=0.1)
    assert r["finished"] and r["copy_result"] is None and r["missing_job_file"].endswith("/9.4")
