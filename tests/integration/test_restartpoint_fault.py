"""A restartpoint that fails for real: the standby's checkpointer cannot write a dirty page (the relation file made
immutable with chattr +i), so CHECKPOINT on the standby fails with "checkpoint request failed". replay_wait asks again
and succeeds once the fault is gone; while it stays, the wait ends after five failures in a row with a message."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.replay_waiter import ReplayWaiter, ServerQuery

from .conftest import spot_check

pytestmark = pytest.mark.integration


def _waiter(standby, target: str, poll_interval: float = 0.3) -> ReplayWaiter:
    params = {"login_host": standby.host, "login_port": standby.port, "login_user": "postgres", "login_password": standby.password, "connect_params": {}}
    query = ServerQuery(params, application_name="pgbackup.lowlevel test restartpoint")
    return ReplayWaiter(query, mode="target_lsn", target_lsn=target, restartpoint=True, timeout=60, stall_timeout=60, poll_interval=poll_interval)


def _chattr(flag: str, path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def test_a_failing_restartpoint_is_asked_again_then_reported(testbed, pg_major):
    spot_check(pg_major, (13, 17, 18), "seen on 17 and 18; the oldest for the older checkpointer")
    # A pair of its own: the shared one must not inherit a checkpointer that has just failed.
    primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-rp-primary")
    standby = primary.make_standby(f"pg{pg_major}-rp-standby")
    primary.sql("DROP TABLE IF EXISTS rp_fault")
    primary.sql("CREATE TABLE rp_fault AS SELECT g AS x FROM generate_series(1, 1000) g")
    standby.wait_replayed()
    path = standby.datadir / standby.sql("SELECT pg_relation_filepath('rp_fault')")[0][0]
    primary.sql("UPDATE rp_fault SET x = x + 1")  # a dirty page on the standby once replayed
    primary.sql("CHECKPOINT")  # a checkpoint record the standby's restartpoint will start from
    target = primary.sql("SELECT redo_lsn::text FROM pg_control_checkpoint()")[0][0]
    standby.wait_replayed()
    try:
        _chattr("+i", path)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"chattr +i is not supported under {path.parent}: {exc.stderr}")
    try:
        # The fault stays: five failed requests in a row, then a message that says what happened.
        with pytest.raises(PgBackupError) as failed:
            _waiter(standby, target).wait()
        message = failed.value.message
        assert failed.value.details["reason"] == "restartpoint_failed", message
        assert "the standby's checkpointer failed the restartpoint 5 times in a row (checkpoint request failed)" in message, message
        assert "server log" in message, message
        log = standby.log_file.read_text(errors="replace")
        assert f"could not write block 0 of {path.relative_to(standby.datadir)}" in log or "could not open file" in log, log[-2000:]
        # The fault goes away while the wait runs: it asks again and gets its restartpoint. (After an error the
        # checkpointer sleeps a second before it takes the next request, so the looks are a second apart.)
        threading.Timer(2.5, subprocess.run, (["chattr", "-i", str(path)],), {"check": False}).start()
        result = _waiter(standby, target, poll_interval=1.0).wait()
    finally:
        time.sleep(3)  # the timer's chattr first, then this one for certain
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    assert result["reached"] is True and result["checkpoints_requested"] == 1, result
    assert result["checkpoint_requests_failed"] >= 1, "the first requests failed while the file was immutable"
