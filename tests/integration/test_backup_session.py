"""backup_start / backup_stop against real PostgreSQL 13-18, primary and standby: one session held by the keeper across
tasks and ansible-playbook runs, the label PostgreSQL wrote, and every way the backup ends without one (SIGKILL of the
keeper, pg_terminate_backend, max_duration, state=aborted, a standby that does not match)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_label import parse_backup_label
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session, keeper_files

from .support.playbooks import one_major, run_playbook
from .support.waiting import despite_conflicts

# Where these tests run (conftest._skip_outside_its_majors): the backup API is pg_start_backup up to 14 and pg_backup_start from 15.
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 14, 15, 18)]

# Quotes, shell syntax and SQL that must reach the server as data (no Jinja delimiters: Ansible would template them).
NASTY_LABEL = 'it\'s "q" $(id) `uname`; DROP TABLE x; -- \\ end'
KEEPER_APP = "pgbackup.lowlevel keeper %"


def _abort_message(major: int) -> str:
    return f"aborting backup due to backend exiting before {'pg_backup_stop' if major >= 15 else 'pg_stop_backup'} was called"


def _keeper_pids(cluster) -> list:
    return [row[0] for row in cluster.sql("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (KEEPER_APP,))]


def _wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout}s")


def _run(env, testbed, tmp_path: Path, cluster, **extra) -> tuple:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / f"result-{uuid.uuid4().hex[:8]}.json"
    args = {"cluster_name": cluster.name, "state_dir": str(tmp_path / "keepers"), "result_file": str(result_file), **extra}
    proc = run_playbook(env, inventory, "backup_session.yml", args, "--limit", cluster.node.name)
    return json.loads(result_file.read_text()), proc.stdout + proc.stderr


def _params(cluster) -> dict:
    return {"login_host": cluster.host, "login_port": cluster.port, "login_user": "postgres", "login_password": cluster.password, "connect_params": {}}


def _start(cluster, state_dir: Path, backup_id: str, **kwargs) -> dict:
    state_dir.mkdir(mode=0o700, exist_ok=True)
    options = {"label": f"test {backup_id}", "fast": True, "max_duration": 0, "timeout": 120, **kwargs}
    return backup_session.start_backup(_params(cluster), backup_id=backup_id, state_dir=str(state_dir), **options)


def _stop(state_dir: Path, backup_id: str, **kwargs) -> dict:
    options = {"state": "stopped", "wait_for_archive": True, "timeout": 120, **kwargs}
    return backup_session.stop_backup(backup_id=backup_id, state_dir=str(state_dir), **options)


def _check_label(result: dict, started: dict, role: str) -> None:
    label = parse_backup_label(result["backup_label"], seg_size=16 << 20)
    assert label.start_lsn == parse_lsn(started["start_lsn"]), "START WAL LOCATION is the start LSN backup_start returned"
    assert label.start_wal_file == started["start_wal_file"]
    assert label.start_timeline == started["timeline"] == result["stop_timeline"] == 1
    assert label.backup_from == role and label.backup_method == "streamed"
    assert label.label == started["label"]
    if started["checkpoint_lsn"] is not None:
        assert label.checkpoint_lsn == parse_lsn(started["checkpoint_lsn"])
    assert parse_lsn(result["stop_lsn"]) >= label.start_lsn
    start_function = "pg_backup_start(" if "pg_backup_start" in "".join(started["queries"]) else "pg_start_backup("
    assert any(start_function in q for q in started["queries"]), f"queries: the start function: {started['queries']}"
    assert any("pg_backup_stop(" in q or "pg_stop_backup(" in q for q in result["queries"]), "queries: the stop"
    assert result["tablespace_map"] == ""


def _log_offset(cluster) -> int:
    return cluster.log_file.stat().st_size


def _log_since(cluster, offset: int) -> str:
    with open(cluster.log_file, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


def _no_secret_anywhere(password: str, state_dir: Path, *texts: str) -> None:
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    for text in texts:
        assert password not in text


def test_primary_start_canary_stop_in_one_play_then_retry(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    canary = f"canary_{uuid.uuid4().hex[:8]}"
    offset = _log_offset(primary)
    data, output = _run(ansible_env, testbed, tmp_path, primary, canary_table=canary, start_args={"backup_id": "p1", "label": NASTY_LABEL})
    started, stopped = data["started"], data["stopped"]
    assert started["changed"] is True and started["server_role"] == "primary", started
    assert data["activity"] == [str(started["backend_pid"])], "the keeper's session is on the server while the backup runs"
    assert stopped["changed"] is True and stopped["state"] == "stopped", stopped
    assert started["label"] == NASTY_LABEL
    _check_label(stopped, started, "primary")
    assert stopped["duration_seconds"] > 0
    assert primary.sql("SELECT count(*) FROM pg_class WHERE relname = %s", (canary,)) == [(1,)]
    _wait(lambda: _keeper_pids(primary) == [], "the keeper's session going away")
    _wait(lambda: not keeper_files.pid_alive(started["keeper_pid"]), "the keeper exiting after the stop")
    assert _abort_message(pg_major) not in _log_since(primary, offset), "a clean stop aborts nothing"

    again, output_again = _run(ansible_env, testbed, tmp_path, primary, do_start=False, stop_args={"backup_id": "p1"})
    assert again["stopped"]["changed"] is False, "a retried stop returns the stored result"
    for key in ("backup_label", "backup_label_base64", "tablespace_map", "stop_lsn", "stop_wal_file"):
        assert again["stopped"][key] == stopped[key]
    _no_secret_anywhere(primary.password, tmp_path / "keepers", output, output_again)


def test_standby_start_then_stop_from_another_run(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, standby = primary_standby
    data, output = _run(ansible_env, testbed, tmp_path, standby, do_stop=False, password_in_environment=True, start_args={"backup_id": "s1"})
    started = data["started"]
    assert started["changed"] is True and started["server_role"] == "standby", started
    keeper_pid = started["keeper_pid"]
    # The password came in PGPASSWORD: not in the keeper's command line, nor in its environment once connected.
    assert standby.password.encode() not in Path(f"/proc/{keeper_pid}/cmdline").read_bytes()
    assert standby.password.encode() not in Path(f"/proc/{keeper_pid}/environ").read_bytes()
    assert _keeper_pids(standby) == [started["backend_pid"]]

    primary.sql(f"CREATE TABLE canary_{uuid.uuid4().hex[:8]} (id int)")
    primary.sql("SELECT pg_switch_wal()")
    standby.wait_replayed()
    data, output_stop = _run(ansible_env, testbed, tmp_path, standby, do_start=False, stop_args={"backup_id": "s1"})
    stopped = data["stopped"]
    assert stopped["changed"] is True and stopped["state"] == "stopped", stopped
    _check_label(stopped, started, "standby")
    _wait(lambda: _keeper_pids(standby) == [], "the keeper's session going away")
    _no_secret_anywhere(standby.password, tmp_path / "keepers", output, output_stop)


def test_two_concurrent_backups_stop_cleanly(primary_standby, tmp_path, pg_major):
    primary, _standby = primary_standby
    state_dir = tmp_path / "keepers"
    first, second = _start(primary, state_dir, "c1"), _start(primary, state_dir, "c2")
    assert first["keeper_pid"] != second["keeper_pid"] and first["backend_pid"] != second["backend_pid"]
    assert first["start_lsn"] != second["start_lsn"], "concurrent backups on a primary get distinct start points"
    assert sorted(_keeper_pids(primary)) == sorted([first["backend_pid"], second["backend_pid"]])
    again = _start(primary, state_dir, "c1")
    assert again["changed"] is False and again["start_lsn"] == first["start_lsn"] and again["keeper_pid"] == first["keeper_pid"]
    for started in (second, first):
        stopped = _stop(state_dir, started["backup_id"])
        _check_label(stopped, started, "primary")
    _wait(lambda: _keeper_pids(primary) == [], "both keepers' sessions going away")
    with pytest.raises(PgBackupError, match="already was stopped"):
        _start(primary, state_dir, "c1")


def test_killed_keeper_means_aborted(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    offset = _log_offset(primary)
    started = _start(primary, tmp_path / "keepers", "k1")
    os.kill(started["keeper_pid"], signal.SIGKILL)
    _wait(lambda: _keeper_pids(primary) == [], "the killed keeper's session going away")
    data, _output = _run(ansible_env, testbed, tmp_path, primary, do_start=False, stop_args={"backup_id": "k1"})
    stopped = data["stopped"]
    assert stopped.get("failed") is True, stopped
    assert "PostgreSQL aborted the backup" in stopped["msg"] and "no usable backup_label" in stopped["msg"] and "discard" in stopped["msg"]
    assert _wait(lambda: _abort_message(pg_major) in _log_since(primary, offset), "PostgreSQL logging the abort")


def test_terminated_backend_means_aborted(primary_standby, tmp_path, pg_major):
    primary, standby = primary_standby
    for cluster in (primary, standby):
        offset = _log_offset(cluster)
        state_dir = tmp_path / f"keepers-{cluster.role}"
        started = _start(cluster, state_dir, "t1")
        cluster.sql("SELECT pg_terminate_backend(%s)", (started["backend_pid"],))
        with pytest.raises(PgBackupError, match="PostgreSQL aborted the backup") as failure:
            _stop(state_dir, "t1")
        assert "no usable backup_label" in failure.value.message
        assert _wait(lambda c=cluster, o=offset: _abort_message(pg_major) in _log_since(c, o), "PostgreSQL logging the abort")
        _wait(lambda s=started: not keeper_files.pid_alive(s["keeper_pid"]), "the keeper exiting")


def test_max_duration_abort_and_mismatched_standby(primary_standby, tmp_path, pg_major):
    primary, standby = primary_standby
    state_dir = tmp_path / "keepers"
    offset = _log_offset(primary)
    timed = _start(primary, state_dir, "m1", max_duration=2)
    _wait((state_dir / "m1" / keeper_files.ABORTED).exists, "max_duration expiring")
    with pytest.raises(PgBackupError, match="max_duration of 2 seconds was reached"):
        _stop(state_dir, "m1")
    _wait(lambda: not keeper_files.pid_alive(timed["keeper_pid"]), "the keeper exiting after max_duration")

    _start(primary, state_dir, "a1")
    aborted = _stop(state_dir, "a1", state="aborted")
    assert aborted["changed"] is True and aborted["state"] == "aborted"
    assert _stop(state_dir, "a1", state="aborted")["changed"] is False
    with pytest.raises(PgBackupError, match="was aborted: backup_stop was called with state=aborted"):
        _stop(state_dir, "a1")

    _start(primary, state_dir, "x1")
    (sysid,) = standby.sql("SELECT system_identifier::text FROM pg_control_system()")[0]
    with pytest.raises(PgBackupError, match="timeline 1, but the standby the files were copied from is on timeline 7"):
        _stop(state_dir, "x1", expect_system_identifier=sysid, expect_timeline=7)
    with pytest.raises(PgBackupError, match="was aborted"):
        _stop(state_dir, "x1")
    _wait(lambda: _keeper_pids(primary) == [], "every keeper's session going away")
    log = _wait(lambda: _log_since(primary, offset).count(_abort_message(pg_major)) >= 3 and _log_since(primary, offset), "three aborts logged")
    assert log.count(_abort_message(pg_major)) == 3


def test_check_mode_starts_nothing(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    if pg_major != one_major():
        pytest.skip("check mode is the same code on every version")
    primary, _standby = primary_standby
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / "check.json"
    args = {"cluster_name": primary.name, "state_dir": str(tmp_path / "keepers"), "result_file": str(result_file), "do_stop": False}
    run_playbook(ansible_env, inventory, "backup_session.yml", args, "--limit", primary.node.name, "--check")
    data = json.loads(result_file.read_text())
    assert data["started"]["changed"] is True and data["started"]["server_role"] == "primary", data["started"]
    assert "start_lsn" not in data["started"] and data["activity"] == []
    assert not (tmp_path / "keepers").exists()


def test_stop_waiting_for_archive_is_never_cancelled(primary_standby, tmp_path, pg_major):
    if pg_major not in (13, one_major()):
        pytest.skip("the archive wait is the server's; one old-API and one new-API version show it")
    primary, _standby = primary_standby
    state_dir = tmp_path / "keepers"
    started = _start(primary, state_dir, "w1")
    primary.sql("ALTER SYSTEM SET archive_command = 'false'")
    primary.sql("SELECT pg_reload_conf()")
    try:
        with pytest.raises(PgBackupError, match="did not answer within 3 seconds; the stop goes on and is never cancelled"):
            _stop(state_dir, "w1", timeout=3)
        time.sleep(4)  # the server says it waits after more than 5 polls of a second
    finally:
        primary.sql("ALTER SYSTEM RESET archive_command")
        primary.sql("SELECT pg_reload_conf()")
    stopped = _wait(lambda: _retry_stop(state_dir, "w1"), "the stop finishing once archiving works", timeout=60)
    assert stopped["changed"] is False, "the result of the first, abandoned request"
    _check_label(stopped, started, "primary")
    assert any("waiting for required WAL segments to be archived" in n for n in stopped["archive_wait_notices"]), stopped["notices"]


def _retry_stop(state_dir: Path, backup_id: str):
    try:
        return _stop(state_dir, backup_id, timeout=2)
    except PgBackupError as exc:
        assert "never cancelled" in exc.message, exc.message
        return None


def test_standby_promoted_during_the_backup(primary_standby, tmp_path, pg_major):
    _primary, standby = primary_standby
    state_dir = tmp_path / "keepers"
    _start(standby, state_dir, "pr1")
    standby.sql("SELECT pg_promote(true, 60)")
    with pytest.raises(PgBackupError, match="the standby was promoted during online backup") as failure:
        _stop(state_dir, "pr1")
    assert "no usable backup_label" in failure.value.message
    # The fixture replaces the pair for the next test: this standby left recovery for good.


# Both backup APIs (pg_start_backup on 13, pg_backup_start on 18) meet the conflicts; the conflicts are the server's.
@pytest.mark.majors(13, 18)
def test_a_start_cancelled_by_recovery_conflicts_says_why(primary_standby, testbed, tmp_path, pg_major):
    """A busy standby cancels a waiting start (fast false) with SQLSTATE 40001: tried again, then refused saying what to set."""
    primary, standby = primary_standby
    primary.pgbench_init()
    standby.sql("ALTER SYSTEM SET max_standby_streaming_delay = '50ms'")
    standby.sql("SELECT pg_reload_conf()")
    try:
        with testbed.load(primary, 120, clients=2):
            time.sleep(1)
            # A fresh checkpoint record makes the standby's restartpoint real, and without fast it is spread over
            # minutes (checkpoint_completion_target): the start waits, and the load's cleanup records conflict with it.
            primary.sql("CHECKPOINT")
            standby.wait_replayed()
            with pytest.raises(PgBackupError) as caught:
                _start(standby, tmp_path / "keepers", "conflict", fast=False)
            message = caught.value.message
            for needle in (f"port={standby.port}", f"{backup_session.backup_api.START_ATTEMPTS} times", "conflict with recovery", "standby_backup_fast"):
                assert needle in message, message
    finally:
        # The standby still replays the load's cleanup records under the 50 ms delay: even a new session's catalog
        # reads at connection start can be cancelled (FATAL), so these are asked again until one gets through.
        despite_conflicts(lambda: standby.sql("ALTER SYSTEM RESET max_standby_streaming_delay"))
        despite_conflicts(lambda: standby.sql("SELECT pg_reload_conf()"))
    _wait(lambda: despite_conflicts(lambda: standby.sql("SHOW max_standby_streaming_delay")) == [("30s",)], "the standby reloading its delay")
    time.sleep(1)  # the startup process reads the reloaded file on its own, a moment after new sessions do
    # Looked at only now: under the load and the 50 ms delay this very query was cancelled by a conflict too.
    _wait(lambda: despite_conflicts(lambda: _keeper_pids(standby)) == [], "the keeper's session ending")
    # Nothing was left started: the same standby, the load and the 50 ms delay gone (under them even a fast start
    # can be cancelled three times on a loaded machine), takes a backup at once, and it stops cleanly.
    started = _start(standby, tmp_path / "keepers", "after-conflict", fast=True)
    assert started["server_role"] == "standby" and started["start_attempts"] >= 1
    stopped = _stop(tmp_path / "keepers", "after-conflict")
    assert parse_lsn(stopped["stop_lsn"]) >= parse_lsn(started["start_lsn"])
