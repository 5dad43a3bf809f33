"""The backup_restore role and the verify_backup playbook on real PostgreSQL (13 and 18), pgbench writing on the primary
while the backup is taken with the standby_backup playbook: a point-in-time restore to an LSN after a canary (the canary
there, the rows written after the target not, amcheck clean, promoted); a restore as a standby that streams from the
primary; verify_backup on a good and on a damaged copy; --check as a plan; refusals of an unfinished backup."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from .conftest import per_major_cache, role_majors
from .support.restore_checks import amcheck, archived
from .support.roles import SSH_OPTIONS, backup_vars, restore_vars, role_run, run_restore_playbook
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration]


def _oldest_and_newest(pg_major: int) -> None:
    if pg_major not in role_majors():
        pytest.skip("the role drives modules tested on every major; the oldest and newest show it end to end")


@pytest.fixture(scope="session")
def _backups():
    return per_major_cache()


@pytest.fixture
def backup(primary_standby, testbed, ansible_env, tmp_path, pg_major, _backups):
    """A coordinated backup of the standby taken by the standby_backup playbook while pgbench writes; made once per
    major and pair (a backup takes a minute; the tests only read it, and the one that marks it unfinished unmarks it)."""
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    made = _backups.get(pg_major)
    if made and made[0] is primary and made[1].is_dir():
        return made[1]
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    dest = testbed.scratch_dir(f"rs-backup-{pg_major}-{time.monotonic_ns()}") / "backup"
    with testbed.load(primary, 600, clients=2) as load:
        time.sleep(1)
        code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest)
        load.stop()
    assert code == 0, output[-5000:]
    _backups[pg_major] = (primary, dest)
    return dest


def test_point_in_time_restore_stops_at_the_target(backup, primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    canary = f"rs_canary_{time.monotonic_ns()}"
    primary.sql(f"CREATE TABLE {canary} (n int)")
    primary.sql(f"INSERT INTO {canary} VALUES (1)")  # noqa: S608 - a name the test made
    (target,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    primary.sql(f"INSERT INTO {canary} VALUES (2)")  # noqa: S608 - after the target: must not be restored
    (after,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    primary.sql("SELECT pg_switch_wal()")
    wait_for(lambda: archived(primary, after), "the segment after the target being archived")
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rs-pitr")
    extra = restore_vars(
        testbed,
        backup,
        restored,
        primary,
        backup_restore_target="lsn",
        backup_restore_target_value=target,
        backup_restore_target_action="promote",
        backup_restore_restore_command=f"cp {primary.archive_dir}/%f %p",
    )
    try:
        run = run_restore_playbook(ansible_env, testbed, tmp_path, "restore_backup.yml", extra)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert restored.sql(f"SELECT n FROM {canary} ORDER BY n") == [(1,)], "the canary before the target, nothing after it"  # noqa: S608
        assert restored.sql("SELECT pg_is_in_recovery()") == [(False,)]
        assert restored.sql("SELECT count(*) FROM pgbench_accounts")[0][0] > 0
        amcheck(restored, pg_major)
        assert primary.password not in run.stdout + run.stderr
        result = re.search(r'"backup_restore_result": (\{.*?\n    \})', run.stdout, re.S)
        assert result and json.loads(result.group(1))["verified"] is True, run.stdout[-3000:]
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_restore_as_a_standby_streams_from_the_primary(backup, primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rs-standby")
    extra = restore_vars(
        testbed,
        backup,
        restored,
        primary,
        backup_restore_mode="standby",
        backup_restore_primary_host=primary.host,
        backup_restore_primary_port=primary.port,
        backup_restore_replication_password=primary.password,
        backup_restore_application_name=restored.name,
        backup_restore_restore_command=f"cp {primary.archive_dir}/%f %p",
    )
    try:
        run = run_restore_playbook(ansible_env, testbed, tmp_path, "restore_backup.yml", extra)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        wait_for(
            lambda: primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (restored.name,)) == [(1,)],
            "the restored standby streaming",
        )
        assert restored.sql("SELECT pg_is_in_recovery()") == [(True,)]
        assert primary.password not in run.stdout + run.stderr
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_verify_backup_playbook_passes_a_good_backup_and_names_a_missing_segment(backup, primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby

    def verify(path):
        extra = {"verify_backup_hosts": testbed.hosts[0].name, "verify_backup_dir": str(path), "verify_backup_pg_bindir": str(primary.pg.bindir)}
        return run_restore_playbook(ansible_env, testbed, tmp_path, "verify_backup.yml", extra)

    good = verify(backup)
    assert good.returncode == 0, good.stdout[-4000:]
    assert '"result": "ok"' in good.stdout
    damaged = backup.parent / "damaged"
    shutil.copytree(backup, damaged, symlinks=True)
    segments = sorted(p.name for p in (damaged / "pg_wal").iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))
    (damaged / "pg_wal" / segments[0]).unlink()
    bad = verify(damaged)
    assert bad.returncode != 0
    assert segments[0] in bad.stdout, bad.stdout[-4000:]


def test_restore_check_is_a_plan_and_an_unfinished_backup_is_refused(backup, primary_standby, testbed, ansible_env, tmp_path, pg_major):
    primary, _standby = primary_standby
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rs-check")
    plan = run_restore_playbook(ansible_env, testbed, tmp_path, "restore_backup.yml", restore_vars(testbed, backup, restored, primary), "--check")
    assert plan.returncode == 0, plan.stdout[-4000:]
    assert "backup_restore : Plan]" in plan.stdout and '"ends_in": "promoted"' in plan.stdout, plan.stdout[-3000:]
    assert not restored.datadir.exists() or not any(restored.datadir.iterdir()), "check mode wrote nothing"
    marker = backup / ".pgbackup-incomplete"
    marker.write_text("a failed backup\n")
    try:
        refused = run_restore_playbook(ansible_env, testbed, tmp_path, "restore_backup.yml", restore_vars(testbed, backup, restored, primary))
    finally:
        marker.unlink()  # the backup is shared with the other tests of the major
    assert refused.returncode != 0
    assert "is not a finished backup" in refused.stdout and ".pgbackup-incomplete" in refused.stdout, refused.stdout[-3000:]
    assert not restored.datadir.exists() or not any(restored.datadir.iterdir()), "nothing was copied"


def test_restore_from_the_backup_host_over_ssh(netns_testbed, netns_pair, ansible_env, tmp_path, pg_major):
    """Across namespace hosts: the standby_backup playbook puts a backup on db3; restore_backup pulls it onto db1 with
    rsync over ssh and recovers it to the end of its WAL, promoted."""
    if pg_major != max(role_majors()):
        pytest.skip("the ssh path of the restore is the same on every version: the newest shows it")
    bed = netns_testbed
    primary, standby = netns_pair
    db1, db3 = bed.host("db1"), bed.host("db3")
    backup = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-rs-remote-backup")
    restored = bed.empty_cluster(pg_major, host=db1, name=f"pg{pg_major}-rs-remote")
    key = str(bed.run_dir / "ssh" / "id_ed25519")
    extra = backup_vars(
        db3.name,
        primary,
        standby,
        backup.datadir,
        tmp_path / "keepers",
        standby_backup_source_ssh_host=standby.node.address,
        standby_backup_ssh_key=key,
        standby_backup_ssh_options=SSH_OPTIONS,
    )
    made = run_restore_playbook(ansible_env, bed, tmp_path, "standby_backup.yml", extra)
    assert made.returncode == 0, made.stdout[-5000:] + made.stderr[-2000:]
    extra_restore = restore_vars(
        bed,
        backup.datadir,
        restored,
        primary,
        backup_restore_hosts=db1.name,
        backup_restore_source_ssh_host=db3.address,
        backup_restore_ssh_key=key,
        backup_restore_ssh_options=SSH_OPTIONS,
    )
    try:
        run = run_restore_playbook(ansible_env, bed, tmp_path, "restore_backup.yml", extra_restore)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert restored.sql("SELECT pg_is_in_recovery()") == [(False,)], "recovered to the end of the backup's WAL and promoted"
        assert restored.sql("SELECT system_identifier FROM pg_control_system()") == primary.sql("SELECT system_identifier FROM pg_control_system()")
        assert primary.password not in made.stdout + run.stdout + run.stderr
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_restore_maps_tablespaces(lone_primary, testbed, ansible_env, tmp_path, pg_major):
    """A primary with a tablespace, backed up (standby_backup in source_only mode) with the tablespace mapped into the
    backup host's place, restored with it mapped again: the table in it is readable and PostgreSQL reports the new place.

    The primary has no standby (conftest.lone_primary)."""
    _oldest_and_newest(pg_major)
    primary = lone_primary
    ts_src, ts_bak, ts_new = (testbed.scratch_dir(f"rs-ts-{kind}-{pg_major}") for kind in ("src", "bak", "new"))
    dest = testbed.scratch_dir(f"rs-ts-backup-{pg_major}") / "backup"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-rs-ts")
    try:
        primary.sql(f"CREATE TABLESPACE rs_ts LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE rs_ts_t TABLESPACE rs_ts AS SELECT g FROM generate_series(1, 1000) g")
        code, output = role_run(
            ansible_env,
            testbed,
            tmp_path,
            primary,
            primary,
            dest,
            standby_backup_mode="source_only",
            standby_backup_source_data_dir=str(primary.datadir),
            standby_backup_tablespace_mapping={str(ts_src): str(ts_bak)},
        )
        assert code == 0, output[-5000:]
        extra = restore_vars(testbed, dest, restored, primary, backup_restore_tablespace_mapping={str(ts_bak): str(ts_new)})
        run = run_restore_playbook(ansible_env, testbed, tmp_path, "restore_backup.yml", extra)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert restored.sql("SELECT count(*) FROM rs_ts_t") == [(1000,)]
        assert restored.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'rs_ts'") == [(str(ts_new),)]
        assert any(ts_new.iterdir()), "the tablespace's files are in its new place"
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql("DROP TABLE IF EXISTS rs_ts_t")
        primary.sql("DROP TABLESPACE IF EXISTS rs_ts")
