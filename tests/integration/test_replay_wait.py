"""replay_wait against real PostgreSQL 13-18 through ansible-playbook: with pgbench writing, a standby's restartpoint
passes the start of a backup taken on the primary before the module returns; a paused standby, a promoted one, a
standby of another cluster and one with recovery_min_apply_delay fail at once; and consistent mode on a server
restored from a low-level backup returns only once it accepts connections with the end of the backup reached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn

from .harness.pgbins import ROOT

# Where these tests run (conftest._skip_outside_its_majors): replay_wait's SQL differs only before 14 (no
# pg_get_wal_replay_pause_state), and the newest may change it.
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 14, 18)]

PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "replay_wait.yml"
ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
TIMEOUT = 120  # what the module may wait; "at once" means far less


def _argv(env: dict, inventory: Path, host: str, waits: list) -> tuple:
    result_file = inventory.parent / "replay_wait-result.json"
    result_file.unlink(missing_ok=True)
    extra_file = inventory.parent / "replay_wait-extra.json"
    extra_file.write_text(json.dumps({"waits": waits, "result_file": str(result_file)}))
    return [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(PLAYBOOK), "-e", f"@{extra_file}", "--limit", host], result_file


def _results(proc: subprocess.CompletedProcess, argv: list, result_file: Path) -> list:
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _replay_wait(env: dict, inventory: Path, host: str, waits: list) -> tuple:
    """Run the playbook over ``waits`` (``{cluster_name, args}`` each); the registered result of each, and what it printed."""
    argv, result_file = _argv(env, inventory, host, waits)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    return _results(proc, argv, result_file), proc.stdout + proc.stderr


def _backup_start(conn, major: int) -> int:
    with conn.cursor() as cur:
        if major >= 15:
            cur.execute("SELECT pg_backup_start('replay_wait test', true)::text")
        else:
            cur.execute("SELECT pg_start_backup('replay_wait test', true, false)::text")
        return parse_lsn(cur.fetchone()[0])


def _backup_stop(conn, major: int) -> tuple:
    """(stop LSN, backup_label, tablespace_map), waiting until the WAL the backup needs is archived."""
    with conn.cursor() as cur:
        if major >= 15:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)")
        else:
            cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)")
        lsn, label, spcmap = cur.fetchone()
    return parse_lsn(lsn), label, spcmap


def _pgbench_tables(primary) -> None:
    if primary.sql("SELECT to_regclass('pgbench_accounts') IS NULL") == [(True,)]:
        primary.pgbench_init()


def _identity(cluster) -> tuple:
    return cluster.sql("SELECT s.system_identifier, c.timeline_id FROM pg_control_system() s, pg_control_checkpoint() c")[0]


def _wait_for(what: str, done, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


# The restartpoint is asked and read the same way on every major: the oldest and newest (14's pause state is above).
@pytest.mark.majors(13, 18)
def test_restartpoint_passes_backup_start_under_load(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, standby = primary_standby
    _pgbench_tables(primary)
    sysid, timeline = _identity(primary)
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    conn = primary.connect()
    with testbed.load(primary, 30, clients=2):
        time.sleep(0.5)
        start = _backup_start(conn, pg_major)
        try:
            redo_before = parse_lsn(standby.sql("SELECT redo_lsn::text FROM pg_control_checkpoint()")[0][0])
            args = {"target_lsn": f"{start >> 32:X}/{start & 0xFFFFFFFF:X}", "restartpoint": True, "expect_system_identifier": sysid}
            args.update(expect_timeline=timeline, timeout=TIMEOUT, stall_timeout=TIMEOUT, poll_interval=0.5)
            # First a look in check mode (no waiting, no CHECKPOINT), then the wait.
            waits = [{"cluster_name": standby.name, "args": args, "check": True}, {"cluster_name": standby.name, "args": args}]
            (looked, result), _unused_proc = _replay_wait(ansible_env, inventory, standby.node.name, waits)
            checkpoint_after, redo_after, tli_after = standby.sql("SELECT checkpoint_lsn::text, redo_lsn::text, timeline_id FROM pg_control_checkpoint()")[0]
        finally:
            _backup_stop(conn, pg_major)
            conn.close()
    assert looked.get("failed") is not True, looked
    assert looked["checkpoints_requested"] == 0 and "CHECKPOINT" not in looked["queries"] and looked["observations"] == 1
    assert looked["reached"] is (parse_lsn(looked["redo_lsn"]) >= start) and looked["waited_seconds"] < 20
    if redo_before < start:
        assert looked["reached"] is False, "check mode does not wait"
    assert result.get("failed") is not True, result
    assert result["reached"] is True and result["changed"] is False and result["mode"] == "target_lsn"
    assert result["system_identifier"] == str(sysid) and result["checkpoint_timeline"] == result["timeline"] == tli_after == timeline
    assert result["in_recovery"] is True and result["replay_paused"] is False
    redo, checkpoint, replay = parse_lsn(result["redo_lsn"]), parse_lsn(result["checkpoint_lsn"]), parse_lsn(result["replay_lsn"])
    # The restartpoint the module returned on is on the standby's disk: its redo point passed the backup's start.
    assert start <= redo <= parse_lsn(redo_after)
    assert redo < checkpoint <= parse_lsn(checkpoint_after) and checkpoint <= replay
    if redo_before < start:  # nearly always: the standby's own restartpoints are minutes apart
        assert result["checkpoints_requested"] >= 1
    assert result["replay_progress_bytes"] >= 0 and result["observations"] >= 1 and 0 <= result["waited_seconds"] < TIMEOUT
    assert "CHECKPOINT" in result["queries"] or result["checkpoints_requested"] == 0


def test_fails_at_once(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, standby = primary_standby
    sysid, _unused_tli = _identity(primary)
    other = testbed.new_primary(pg_major, name=f"pg{pg_major}-rw-other")
    other_sysid, _unused_other_tli = _identity(other)
    other.stop()
    assert other_sysid != sysid
    delayed = primary.make_standby(f"pg{pg_major}-rw-delayed")
    promoted = primary.make_standby(f"pg{pg_major}-rw-promoted")
    try:
        assert promoted.sql("SELECT pg_promote()") == [(True,)]
        delayed.sql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        delayed.sql("SELECT pg_reload_conf()")
        _wait_for("reloaded", lambda: delayed.sql("SHOW recovery_min_apply_delay") == [("1h",)])
        standby.sql("SELECT pg_wal_replay_pause()")
        replayed = standby.current_lsn()
        primary.sql("CREATE TABLE IF NOT EXISTS replay_wait_it (id int); INSERT INTO replay_wait_it VALUES (1)")
        target = primary.current_lsn()
        _wait_for(
            "held back by the apply delay",
            lambda: delayed.sql("SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'startup'") == [("RecoveryApplyDelay",)],
        )
        common = {"timeout": TIMEOUT, "stall_timeout": TIMEOUT, "poll_interval": 0.5}
        waits = [
            {"cluster_name": standby.name, "args": dict(common, target_lsn=target, expect_system_identifier=sysid)},
            {"cluster_name": promoted.name, "args": dict(common, target_lsn=target, expect_system_identifier=sysid)},
            # Already replayed, so only the system identifier stops it (the pause does not matter there).
            {"cluster_name": standby.name, "args": dict(common, target_lsn=replayed, expect_system_identifier=other_sysid)},
            {"cluster_name": delayed.name, "args": dict(common, target_lsn=target, expect_system_identifier=sysid)},
            # Last: resume_paused resumes the paused standby once, and then the target is reached.
            {"cluster_name": standby.name, "args": dict(common, target_lsn=target, expect_system_identifier=sysid, resume_paused=True)},
            # Streaming: from the wrong upstream fails at once; from the primary, caught up, it is reached.
            {"cluster_name": standby.name, "args": dict(common, mode="streaming", upstream_host=primary.host, upstream_port=primary.port + 1)},
            {"cluster_name": standby.name, "args": dict(common, mode="streaming", upstream_host=primary.host, upstream_port=primary.port, max_lag_bytes=0)},
        ]
        inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        began = time.monotonic()
        (paused, was_promoted, foreign, held, resumed, wrong_upstream, streaming), output = _replay_wait(ansible_env, inventory, primary.node.name, waits)
        elapsed = time.monotonic() - began
        still_paused = standby.sql("SELECT pg_is_wal_replay_paused()")[0][0]
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
        for cluster in (delayed, promoted, other):
            testbed.discard(cluster)  # out of later inventories, and off the disk
    for result in (paused, was_promoted, foreign, held, wrong_upstream):
        assert result.get("failed") is True, result
        assert result["waited_seconds"] < 20, result
        assert f"target {result['target_lsn'] or 'none'}, last replayed {result['replay_lsn']}, waited " in result["msg"]
    assert elapsed < 60, f"seven waits of timeout={TIMEOUT} s took {elapsed:.0f} s"
    assert paused["reason"] == "paused" and "WAL replay is paused" in paused["msg"] and paused["replay_paused"] is True
    assert was_promoted["reason"] == "promoted" and "not in recovery" in was_promoted["msg"] and was_promoted["in_recovery"] is False
    assert foreign["reason"] == "system_identifier" and foreign["system_identifier"] == str(sysid)
    assert f"its system identifier is {sysid}, expected {other_sysid}" in foreign["msg"]
    assert held["reason"] == "apply_delay" and "recovery_min_apply_delay = 1 h (3600000 ms)" in held["msg"]
    assert resumed.get("failed") is not True, resumed
    assert resumed["changed"] is True and resumed["resumed_replay"] is True and resumed["reached"] is True
    assert parse_lsn(resumed["replay_lsn"]) >= parse_lsn(target) and still_paused is False
    assert wrong_upstream["reason"] == "upstream" and f"port {primary.port} (expected {primary.port + 1})" in wrong_upstream["msg"]
    assert streaming.get("failed") is not True, streaming
    assert streaming["reached"] is True and streaming["receiver_status"] == "streaming" and streaming["lag_bytes"] == 0
    assert (streaming["sender_host"], streaming["sender_port"]) == (primary.host, primary.port)
    # Ansible shows module warnings (and drops them from registered loop results).
    assert "WAL replay was paused on the server; resumed it with pg_wal_replay_resume()" in output


def _copy_data_dir(source: Path, dest: Path) -> None:
    """Copy a running server's data directory (files may vanish meanwhile), without postmaster.* and WAL, owned by postgres."""

    def ignore(directory: str, names: list) -> set:
        if Path(directory) == source:
            return {"postmaster.pid", "postmaster.opts"} & set(names)
        if Path(directory) == source / "pg_wal":
            return {name for name in names if name != "archive_status"}
        if Path(directory) == source / "pg_wal" / "archive_status":
            return set(names)
        return set()

    def copy(src: str, dst: str) -> None:
        try:
            shutil.copy2(src, dst)
        except FileNotFoundError:
            pass

    shutil.copytree(source, dest, symlinks=True, ignore=ignore, copy_function=copy)
    for root, dirs, files in os.walk(dest):
        for name in [*dirs, *files]:
            shutil.chown(os.path.join(root, name), "postgres", "postgres")
    shutil.chown(dest, "postgres", "postgres")


# Consistency is read the same way on every major: the oldest and newest.
@pytest.mark.majors(13, 18)
def test_consistent_on_server_restored_from_backup(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _unused_standby = primary_standby
    _pgbench_tables(primary)
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rw-restored")
    conn = primary.connect()
    try:
        with testbed.load(primary, 30, clients=2):
            time.sleep(1)
            start = _backup_start(conn, pg_major)
            _copy_data_dir(primary.datadir, restored.datadir)
            primary.sql("SELECT pg_switch_wal()")  # the copy needs WAL of more than one segment
            stop, label, spcmap = _backup_stop(conn, pg_major)
    finally:
        conn.close()
    start_segment = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (f"{start >> 32:X}/{start & 0xFFFFFFFF:X}",))[0][0]
    assert stop // (16 << 20) > start // (16 << 20)
    for name, text in (("backup_label", label), ("tablespace_map", spcmap)):
        if text:
            (restored.datadir / name).write_text(text)
            shutil.chown(restored.datadir / name, "postgres", "postgres")
    restored.write_settings()
    gate = restored.base / "restore-gate"
    # Only the backup's first segment comes before the gate opens: the server starts recovery and stays inconsistent.
    restore = f"test %f = {start_segment} -o -e {gate} && cp {primary.archive_dir}/%f %p"
    with open(restored.datadir / "testbed.conf", "a") as conf:
        conf.write(f"restore_command = '{restore}'\nwal_retrieve_retry_interval = '100ms'\n")
    (restored.datadir / "standby.signal").touch()
    shutil.chown(restored.datadir / "standby.signal", "postgres", "postgres")
    restored.run([str(restored.pg.bindir / "pg_ctl"), "-D", str(restored.datadir), "-l", str(restored.log_file), "-W", "start"])
    try:
        inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        args = {"mode": "consistent", "data_dir": str(restored.datadir), "timeout": TIMEOUT, "stall_timeout": TIMEOUT, "poll_interval": 0.2}
        argv, result_file = _argv(ansible_env, inventory, restored.node.name, [{"cluster_name": restored.name, "args": args}])
        with subprocess.Popen(argv, env=ansible_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as playbook:
            try:
                refused = ("the database system is starting up", "the database system is not yet accepting connections")
                _wait_for("refusing the module", lambda: any(text in restored.log_tail(200) for text in refused))
                time.sleep(0.5)
                assert playbook.poll() is None, "replay_wait returned while the copy was still inconsistent"
                assert restored.postmaster_pid() is not None
            finally:
                gate.touch()
            stdout, stderr = playbook.communicate(timeout=300)
        (result,) = _results(subprocess.CompletedProcess(argv, playbook.returncode, stdout, stderr), argv, result_file)
        assert result.get("failed") is not True, f"{result}\n--- {restored.log_file}:\n{restored.log_tail(60)}"
        recovery = restored.sql(
            "SELECT pg_is_in_recovery(), backup_start_lsn::text, backup_end_lsn::text, end_of_backup_record_required, "
            "min_recovery_end_lsn::text, pg_last_wal_replay_lsn()::text FROM pg_control_recovery()"
        )[0]
    finally:
        restored.stop("immediate")
    assert result["reached"] is True and result["accepting_connections"] is True and result["refused_connections"] >= 1
    assert result["backup_start_lsn"] == "0/0" and result["backup_end_lsn"] == "0/0" and result["end_of_backup_record_required"] is False
    assert parse_lsn(result["consistent_lsn"]) >= stop, "consistent no earlier than the end of the backup"
    assert recovery[:4] == (True, "0/0", "0/0", False)
    assert parse_lsn(recovery[5]) >= parse_lsn(result["replay_lsn"]) >= stop
