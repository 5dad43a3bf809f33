"""Each role run with --check is a plan: it prints what would be copied, from where, to where and with which settings,
and changes nothing - no slot, no backup started, no file written - while refusals the run would meet (a destination
that is not empty) already fail the plan."""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import role_majors
from .support.roles import check_mode_vars, check_run, nothing_happened, role_run

pytestmark = [pytest.mark.integration]


def _oldest_and_newest(pg_major: int) -> None:
    if pg_major not in role_majors():
        pytest.skip("check mode reads the same catalog on every version: the oldest and newest show it")


def _plan(stdout: str) -> dict:
    """The msg of the last "Plan" task (json result format)."""
    found = re.findall(r"TASK \[[^\]]*: Plan[^\]]*\][^\n]*\nok: \[[^\]]+\] => (\{.*?\n\})", stdout, re.S)
    assert found, stdout[-4000:]
    return json.loads(found[-1])["msg"]


@pytest.mark.parametrize("mode", ["coordinated", "standby_only"])
def test_standby_backup_check_is_a_plan(primary_standby, testbed, ansible_env, tmp_path, pg_major, mode):
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"check-{mode}-{pg_major}") / "backup"
    state_dir = tmp_path / "keepers"
    run = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", check_mode_vars(primary, standby, dest, state_dir, standby_backup_mode=mode))
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    plan = _plan(run.stdout)
    server = primary if mode == "coordinated" else standby
    assert plan["start_and_stop_on"].startswith(f"{server.host}:{server.port} ({'primary' if mode == 'coordinated' else 'standby'}")
    assert plan["files_from"] == str(standby.datadir) and plan["to"].endswith(f":{dest}")
    assert plan["files"] > 100 and plan["bytes"] > 10 * 2**20, plan
    assert plan["slot_on_standby"].startswith("pgbackup_")
    assert (plan["wait_for_replay_on"] is not None) == (mode == "coordinated")
    assert not dest.exists(), "the destination was not made"
    nothing_happened(primary, standby, state_dir)
    assert primary.password not in run.stdout + run.stderr


def test_standby_backup_check_meets_the_refusals_of_a_run(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"check-busy-{pg_major}")
    (dest / "somebody_elses_file").write_text("keep me")
    state_dir = tmp_path / "keepers"
    run = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", check_mode_vars(primary, standby, dest, state_dir))
    assert run.returncode != 0
    assert "is not empty" in run.stdout, run.stdout[-3000:]
    assert sorted(p.name for p in dest.iterdir()) == ["somebody_elses_file"]
    nothing_happened(primary, standby, state_dir)


def test_standby_backup_session_role_reaches_every_connection(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """standby_backup_session_role is SET ROLE on each of the role's connections: a role that does not exist refuses
    the plan at its first connection, one that exists (made on the primary, replicated to the standby) passes it."""
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"check-session-role-{pg_major}") / "backup"
    state_dir = tmp_path / "keepers"
    missing = check_mode_vars(primary, standby, dest, state_dir, standby_backup_session_role="pgbt_no_such_role")
    run = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", missing)
    assert run.returncode != 0
    assert "cannot switch to session_role 'pgbt_no_such_role'" in run.stdout, run.stdout[-3000:]
    primary.sql("DO $$BEGIN CREATE ROLE pgbt_backup_admin SUPERUSER NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    try:
        _wait_for_role(standby)
        present = check_mode_vars(primary, standby, dest, state_dir, standby_backup_session_role="pgbt_backup_admin")
        run = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", present)
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
        nothing_happened(primary, standby, state_dir)
    finally:
        primary.sql("DROP ROLE IF EXISTS pgbt_backup_admin")  # the pair is shared with other tests


def _wait_for_role(server) -> None:
    for _attempt in range(100):
        if server.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'pgbt_backup_admin'") == [(1,)]:
            return
        time.sleep(0.1)
    raise AssertionError(f"pgbt_backup_admin did not reach {server.host}:{server.port}")


def test_replica_clone_check_is_a_plan(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    clone_dir = testbed.scratch_dir(f"check-clone-{pg_major}") / "clone"
    state_dir = tmp_path / "keepers"
    extra = {
        "replica_clone_hosts": "all",
        "replica_clone_upstream_host": standby.host,
        "replica_clone_upstream_port": standby.port,
        "replica_clone_upstream_data_dir": str(standby.datadir),
        "replica_clone_primary_host": primary.host,
        "replica_clone_primary_port": primary.port,
        "replica_clone_login_password": primary.password,
        "replica_clone_data_dir": str(clone_dir),
        "replica_clone_state_dir": str(state_dir),
        "replica_clone_slot_name": "check_mode_clone",
        "replica_clone_pg_bindir": str(standby.pg.bindir),
    }
    run = check_run(ansible_env, testbed, tmp_path, "clone_replica.yml", extra)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    copy_plan = re.search(r"TASK \[pgbackup\.lowlevel\.standby_backup : Plan\]", run.stdout)
    assert copy_plan, "the copy's plan comes from standby_backup"
    plan = _plan(run.stdout)
    assert plan["streams_from"] == f"{standby.host}:{standby.port}" and plan["slot_on_upstream"] == "check_mode_clone"
    assert plan["action"] == "copy into an empty directory"
    assert not clone_dir.exists()
    nothing_happened(primary, standby, state_dir)


def test_login_db_lets_a_role_without_a_database_of_its_name_connect(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """libpq's default database is the login role's name: a role with no database of that name could not connect at all.
    standby_backup_login_db (default postgres) is the database every connection of the role uses; a wrong one is refused
    in the preflight, naming it."""
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    user = "pgbk_no_db_of_its_name"
    primary.sql(f"DROP ROLE IF EXISTS {user}")
    primary.sql(f"CREATE ROLE {user} LOGIN SUPERUSER REPLICATION PASSWORD %s", (primary.password,))
    standby.wait_replayed(primary.current_lsn())
    state_dir = tmp_path / "keepers"
    dest = testbed.scratch_dir(f"check-login-db-{pg_major}") / "backup"
    try:
        plain = check_mode_vars(primary, standby, dest, state_dir, standby_backup_login_user=user)
        passes = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", plain)
        assert passes.returncode == 0, passes.stdout[-4000:]
        wrong = check_mode_vars(primary, standby, dest, state_dir, standby_backup_login_user=user, standby_backup_login_db="no_such_database")
        refused = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", wrong)
        assert refused.returncode != 0
        assert 'database "no_such_database" does not exist' in refused.stdout, refused.stdout[-3000:]
        assert f"host={standby.host}, port={standby.port}" in refused.stdout, "the refusal names the server"
        nothing_happened(primary, standby, state_dir)
    finally:
        primary.sql(f"DROP ROLE IF EXISTS {user}")


def test_max_rate_limits_the_copy_and_a_useless_one_is_refused_first(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """standby_backup_max_rate reaches the copy (rsync --bwlimit over the streams; the rate is printed, never asserted),
    and a limit below 1 KiB/s per stream is refused in the preflight, before any slot or backup; so is
    standby_backup_transport: stream for a copy on one host, in the role's words."""
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    state_dir = tmp_path / "keepers"
    dest = testbed.scratch_dir(f"max-rate-{pg_major}") / "backup"
    refused = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", check_mode_vars(primary, standby, dest, state_dir, standby_backup_max_rate=1000))
    assert refused.returncode != 0 and "max_rate must be 0 (no limit) or at least 1024 bytes/s per stream" in refused.stdout, refused.stdout[-3000:]
    nothing_happened(primary, standby, state_dir)
    local_stream = check_mode_vars(primary, standby, dest, state_dir, standby_backup_transport="stream")
    refused = check_run(ansible_env, testbed, tmp_path, "standby_backup.yml", local_stream)
    assert refused.returncode != 0, refused.stdout[-3000:]
    assert "standby_backup_transport: stream copies from another host (standby_backup_source_ssh_host)" in refused.stdout, refused.stdout[-3000:]
    nothing_happened(primary, standby, state_dir)
    code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_max_rate=16 * 2**20)
    assert code == 0, output[-4000:]
    rate = re.findall(r"copied [^\n]* MiB/s", output)
    print(f"with standby_backup_max_rate 16 MiB/s: {rate[-1] if rate else '?'}")
    assert "--bwlimit" not in output
