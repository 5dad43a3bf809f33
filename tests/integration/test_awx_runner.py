"""The playbooks, unchanged, as AWX job templates: ansible-runner over a private data directory laid out as AWX lays it
out (project/ with collections/requirements.yml naming the built tarball, requirements_collections/, inventory/hosts
script, env/extravars with the custom credential's password, env/envvars, env/settings). See docs/awx.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from .awx import PrivateDataDir, build_collection, files_containing, yaml_to_script_inventory
from .harness.pgbins import client_bindir, postgres_install, selected_majors
from .support.roles import backup_vars, restore_vars
from .support.waiting import wait_for

pytestmark = [pytest.mark.integration]

MAJOR = 15
BACKUPS: dict[int, Path] = {}  # pg_major -> the backup the standby_backup job made, for the verify_backup job


@pytest.fixture(autouse=True)
def _one_major(pg_major):
    """Autouse, so the skip comes before primary_standby would make a pair of a major the test does not run on."""
    wanted = MAJOR if MAJOR in selected_majors() else max(selected_majors())
    if pg_major != wanted:
        pytest.skip(f"the AWX layout does not depend on the server version: it runs on {wanted} only")


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("galaxy-build"))


def _job_dir(tmp_path, testbed, tarball, extravars) -> PrivateDataDir:
    """A fresh private data directory; the password rides in env/extravars, as a custom credential's extra_vars injector puts it."""
    bed_inventory = testbed.write_inventory(tmp_path / "testbed-inventory" / "hosts.yml")
    return PrivateDataDir(tmp_path / "job", tarball, yaml_to_script_inventory(bed_inventory), extravars)


def _secret_kept(job, pdd: PrivateDataDir, password: str) -> None:
    """The password is in env/extravars (where AWX writes credential extra vars) and nowhere the job leaves behind."""
    assert password not in job.stdout + job.proc.stdout + job.proc.stderr, "the job's output prints the PostgreSQL password: find the task without no_log"
    leaking = [e.get("uuid") for e in job.events if password in str(e)]
    assert not leaking, f"job events {leaking} carry the PostgreSQL password; expected none: add no_log to their tasks"
    leaked_files = [str(p.relative_to(job.artifacts)) for p in files_containing(job.artifacts, password)]
    assert not leaked_files, f"artifact files {leaked_files} hold the PostgreSQL password; expected none: pass it as an extra var, not an env var"
    holders = [p.relative_to(pdd.root) for p in files_containing(pdd.root, password)]
    assert [str(p) for p in holders] == ["env/extravars"], f"the password is in {holders}; expected only env/extravars"


def _collection_from_the_tarball(job, pdd: PrivateDataDir) -> None:
    """Every task of the collection ran from requirements_collections/ (the installed tarball), none from this checkout."""
    paths = {e["event_data"]["task_path"].rsplit(":", 1)[0] for e in job.events if e.get("event_data", {}).get("task_path")}
    installed = str(pdd.collections.resolve() / "ansible_collections" / "pgbackup" / "lowlevel")
    from_collection = [p for p in paths if "/roles/" in p]
    assert from_collection, f"no task of a role in the job events; expected the role's tasks: {sorted(paths)}"
    elsewhere = [p for p in from_collection if not str(Path(p).resolve()).startswith(installed)]
    assert not elsewhere, f"role tasks ran from {elsewhere}; expected them all under {installed}: is ANSIBLE_COLLECTIONS_PATH leaking in?"


def test_standby_backup_as_an_awx_job(primary_standby, testbed, tarball, tmp_path, pg_major):
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"awx-backup-{pg_major}", shared=True) / "backup"
    extravars = backup_vars(testbed.hosts[0].name, primary, standby, dest, tmp_path / "keepers")
    pdd = _job_dir(tmp_path, testbed, tarball, extravars)
    job = pdd.run("standby_backup.yml", ident="standby_backup")
    assert job.status == "successful" and job.rc == "0", job.explain()
    for name in ("backup_label", "backup_manifest"):
        assert (dest / name).is_file(), f"{dest / name} is missing after a successful job; {sorted(p.name for p in dest.iterdir())}"
    summaries = job.ok_events("Summary")
    assert len(summaries) == 1, f"expected one runner_on_ok event of the Summary task, found {len(summaries)}: {job.explain()}"
    msg = summaries[0]["event_data"]["res"]["msg"]
    assert msg["start_lsn"] and msg["stop_lsn"] and "/" in msg["stop_lsn"], f"Summary without LSNs: {msg}"
    progress = [line for line in job.stdout.splitlines() if "copied " in line and " MiB/s" in line]
    assert progress, f"the job output shows no progress line of the copy (copy_wait's 'copied ... MiB/s'): {job.stdout[-3000:]}"
    assert "FAILED - RETRYING" not in job.stdout, "progress is shown as lines, not as retries of a failing task"
    _collection_from_the_tarball(job, pdd)
    _secret_kept(job, pdd, primary.password)
    BACKUPS[pg_major] = dest


def test_verify_backup_as_an_awx_job(testbed, tarball, tmp_path, pg_major):
    """verify_backup.yml on the backup the job above made, as a second job template (no credential needed)."""
    if pg_major not in BACKUPS:
        pytest.skip("test_standby_backup_as_an_awx_job made no backup to verify (it failed or was deselected)")
    extravars = {"verify_backup_hosts": testbed.hosts[0].name, "verify_backup_dir": str(BACKUPS[pg_major]), "verify_backup_pg_bindir": str(client_bindir())}
    pdd = _job_dir(tmp_path, testbed, tarball, extravars)
    job = pdd.run("verify_backup.yml", ident="verify_backup")
    assert job.status == "successful" and job.rc == "0", job.explain()
    reports = job.ok_events("Report")
    assert len(reports) == 1, f"expected one runner_on_ok event of the Report task, found {len(reports)}: {job.explain()}"
    msg = reports[0]["event_data"]["res"]["msg"]
    assert msg["result"] == "ok", f"verify_backup reported {msg}; expected result ok for a fresh backup"
    if (postgres_install(pg_major).bindir / "pg_verifybackup").exists():
        assert msg["pg_verifybackup"]["ran"] and msg["pg_verifybackup"]["rc"] == 0, f"pg_verifybackup did not pass: {msg}"
    else:  # the npm packages of the other majors ship no pg_verifybackup (Debian's 15 does); it must say so, not pass
        assert msg["pg_verifybackup"] == {"ran": False, "reason": f"no pg_verifybackup of PostgreSQL {pg_major} on this host"}, msg


def test_restore_backup_as_an_awx_job(primary_standby, testbed, tarball, tmp_path, pg_major):
    """restore_backup.yml restores the backup the first job made to the end of its WAL, promoted."""
    if pg_major not in BACKUPS:
        pytest.skip("test_standby_backup_as_an_awx_job made no backup to restore (it failed or was deselected)")
    primary, _standby = primary_standby
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-awx-restored")
    extravars = restore_vars(testbed, BACKUPS[pg_major], restored, primary)
    pdd = _job_dir(tmp_path, testbed, tarball, extravars)
    try:
        job = pdd.run("restore_backup.yml", ident="restore_backup")
        assert job.status == "successful" and job.rc == "0", job.explain()
        assert restored.sql("SELECT pg_is_in_recovery()") == [(False,)], "restored to the end of its WAL and promoted"
        _collection_from_the_tarball(job, pdd)
        _secret_kept(job, pdd, primary.password)
    finally:
        if restored.is_running():
            restored.stop("immediate")


def test_clone_replica_as_an_awx_job(primary_standby, testbed, tarball, tmp_path, pg_major):
    primary, _standby = primary_standby
    clone = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-awx-clone")
    slot = f"awx_clone_{pg_major}"
    settings = f"-c listen_addresses={clone.host} -c port={clone.port} -c unix_socket_directories={clone.socket_dir}"
    extravars = {
        "replica_clone_hosts": testbed.hosts[0].name,
        "replica_clone_upstream_host": primary.host,
        "replica_clone_upstream_port": primary.port,
        "replica_clone_upstream_data_dir": str(primary.datadir),
        "replica_clone_primary_host": "",
        "replica_clone_primary_port": primary.port,
        "replica_clone_login_password": primary.password,
        "replica_clone_data_dir": str(clone.datadir),
        "replica_clone_state_dir": str(tmp_path / "keepers"),
        "replica_clone_application_name": clone.name,
        "replica_clone_slot_name": slot,
        "replica_clone_pg_bindir": str(clone.pg.bindir),
        "replica_clone_pg_ctl_options": ["-o", settings],
        "replica_clone_log_file": str(clone.log_file),
        "replica_clone_address": clone.host,
        "replica_clone_port": clone.port,
        "replica_clone_timeout": 120,
    }
    pdd = _job_dir(tmp_path, testbed, tarball, extravars)
    try:
        job = pdd.run("clone_replica.yml", ident="clone_replica")
        assert job.status == "successful" and job.rc == "0", job.explain()
        wait_for(
            lambda: primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (clone.name,)) == [(1,)],
            "the clone streaming from the primary",
        )
        _secret_kept(job, pdd, primary.password)
    finally:
        if clone.is_running():
            clone.stop("immediate")
        primary.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND slot_name = %s", (slot,))
