"""A stop that waits for WAL archiving, through the standby_backup role on real PostgreSQL (oldest and newest major):
archive_command fails on the primary, so pg_backup_stop waits. The role shows, every progress interval, what the stop
waits for (the keeper's look at the stopping backend and pg_stat_archiver), fails at standby_backup_stop_timeout saying
the stop goes on, and leaves the destination marked incomplete and no slot; once archiving works the stop ends by
itself and nothing is left open. With the default (auto: the WAL comes from the standby's pg_wal) it does not wait."""

from __future__ import annotations

import pytest

from .conftest import role_majors
from .contract import assert_failure_contract
from .support.roles import role_run
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration]


def _archiving(primary, command: str) -> None:
    primary.sql(f"ALTER SYSTEM SET archive_command = '{command}'" if command else "ALTER SYSTEM RESET archive_command")
    primary.sql("SELECT pg_reload_conf()")


def test_a_stop_waiting_for_archiving_says_what_it_waits_for(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    if pg_major not in role_majors():
        pytest.skip("the wait is the server's and the role's, the same on every version: the oldest and newest show it")
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"stop-wait-{pg_major}") / "copy"
    state_dir = tmp_path / "keepers"
    _archiving(primary, "false")
    try:
        code, output = role_run(
            ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_stop_timeout=14, standby_backup_wait_for_archive="always"
        )
    finally:
        _archiving(primary, "")
    lines = [line for line in output.splitlines() if "the stop has not answered after" in line]
    print("\n".join(lines))
    assert len(lines) >= 2, output[-4000:]
    assert "BackupWaitWalArchive" in lines[-1] and "last failed" in lines[-1] and "archive_command fails" in lines[-1], lines[-1]
    assert f"host={primary.host}, port={primary.port}" in lines[-1], lines[-1]
    # The stop is never cancelled: once archiving works it ends by itself, and then nothing is left open.
    wait_for(lambda: list(state_dir.glob("*/stopped.json")), "the stop ending by itself once archiving works", timeout=120)
    cause = (
        'failed in "Stop the backup"',
        "within 14 seconds (timeout; the role's standby_backup_stop_timeout)",
        "never cancelled",
        f"The stop still runs on {primary.host}:{primary.port}",
        "pg_terminate_backend",
    )
    refusal = (ansible_env, testbed, tmp_path, pg_major)
    servers = {"primary": primary, "standby": standby}
    assert_failure_contract(output, returncode=code, cause=cause, **servers, state_dir=state_dir, dest=dest, written=True, refusal=refusal)


def test_by_default_a_backup_with_its_own_wal_does_not_wait(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    if pg_major not in role_majors():
        pytest.skip("the oldest and newest show it")
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"stop-nowait-{pg_major}") / "copy"
    _archiving(primary, "false")
    try:
        code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_stop_timeout=30)
    finally:
        _archiving(primary, "")
    assert code == 0, output[-4000:]
    assert "the stop has not answered" not in output
