"""datadir_copy with source_kind finished_backup on a real finished backup: the standby_backup role backs up a primary
with a tablespace (source_only mode, the tablespace mapped into the backup's place), the copy restores it into a new data
directory with the tablespace moved again, and the restored server recovers from the backup's own WAL to consistency
with the rows made before the backup and the tablespace in its new place. What is not a finished backup, and a
destination that is not empty, are refused."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.finished_backup import FINISHED_BACKUP

from .conftest import role_majors
from .support.roles import role_run

pytestmark = pytest.mark.integration


def _restore(backup, dest, mapping: dict) -> tuple:
    source = Source(str(backup))
    plan = make_plan(source, str(dest), mapping, [], source_kind=FINISHED_BACKUP)
    check_destination(source, plan, str(dest), False)
    return plan, execute(source, plan, str(dest), parallel=2, owner="postgres")


def _wal_segments(directory) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and len(p.name) == 24}


def _not_ours(root) -> list:
    """Files or directories under ``root`` (links followed) not owned by postgres."""
    uid = (root / "PG_VERSION").stat().st_uid if (root / "PG_VERSION").exists() else os.stat(root).st_uid
    bad = []
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        bad += [os.path.join(dirpath, n) for n in dirs + files if os.lstat(os.path.join(dirpath, n)).st_uid != uid]
    return bad


def _recover(restored) -> None:
    """Recovery from the backup's own pg_wal (no archive), promoted at its end."""
    restored.write_settings()
    with open(restored.datadir / "testbed.conf", "a") as conf:
        conf.write("restore_command = '/bin/false'\narchive_mode = off\n")
    (restored.datadir / "recovery.signal").touch()
    shutil.chown(restored.datadir / "recovery.signal", "postgres", "postgres")
    restored.start()
    deadline = time.monotonic() + 120
    while restored.sql("SELECT pg_is_in_recovery()")[0][0] and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_finished_backup_with_a_tablespace_is_restored_elsewhere_and_recovers(lone_primary, testbed, ansible_env, tmp_path, pg_major):
    if pg_major not in role_majors():
        pytest.skip("the backup is made by the standby_backup role, run on ROLE_MAJORS only")
    primary = lone_primary
    ts_src, ts_bak, ts_new = (testbed.scratch_dir(f"dcf-ts-{kind}-{pg_major}") for kind in ("src", "bak", "new"))
    backup = testbed.scratch_dir(f"dcf-backup-{pg_major}") / "backup"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-dcf-restored")
    try:
        primary.sql(f"CREATE TABLESPACE dcf_ts LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE dcf_ts_t TABLESPACE dcf_ts AS SELECT g FROM generate_series(1, 1000) g")
        primary.sql("CREATE TABLE dcf_canary AS SELECT 42 AS answer")
        code, output = role_run(
            ansible_env,
            testbed,
            tmp_path,
            primary,
            primary,
            backup,
            standby_backup_mode="source_only",
            standby_backup_source_data_dir=str(primary.datadir),
            standby_backup_tablespace_mapping={str(ts_src): str(ts_bak)},
        )
        assert code == 0, output[-5000:]
        (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'dcf_ts'")[0]
        assert (backup / "tablespace_map").read_text() == f"{oid} {ts_bak}\n", "the backup's map names the backup's place"

        # refused before anything is written: a backup marked unfinished
        (backup / copy_state.INCOMPLETE_MARKER).write_text("a failed backup\n")
        try:
            with pytest.raises(PgBackupError, match=re.escape("is not a finished backup: it carries .pgbackup-incomplete")):
                _restore(backup, restored.datadir, {str(ts_bak): str(ts_new)})
        finally:
            (backup / copy_state.INCOMPLETE_MARKER).unlink()
        assert not restored.datadir.exists() or not any(restored.datadir.iterdir())

        plan, result = _restore(backup, restored.datadir, {str(ts_bak): str(ts_new)})
        dest = restored.datadir
        assert plan.tablespaces == [{"oid": oid, "source": str(ts_bak), "dest": str(ts_new), "in_place": False}]
        assert (dest / "backup_label").read_bytes() == (backup / "backup_label").read_bytes()
        assert (dest / "backup_manifest").read_bytes() == (backup / "backup_manifest").read_bytes()
        wal = _wal_segments(backup / "pg_wal")
        assert wal and _wal_segments(dest / "pg_wal") == wal, "the backup's WAL came along"
        assert (dest / "tablespace_map").read_text() == f"{oid} {ts_new}\n"
        assert os.readlink(dest / "pg_tblspc" / oid) == str(ts_new)
        assert (dest / "global" / "pg_control").is_file() and not (dest / copy_state.PENDING_CONTROL).exists()
        assert not (dest / copy_state.INCOMPLETE_MARKER).exists()
        assert any(p.name.startswith(f"PG_{pg_major}_") for p in ts_new.iterdir())
        assert not (dest / copy_state.CHECKSUMS_FILE).exists(), "the manifest is the restore's record (pg_verifybackup knows no other file)"
        assert result["files"] > 900 and result["bytes"] > 0
        assert _not_ours(dest) == [], "every file belongs to the owner, with no chown afterwards"

        # a second restore into the now filled directory is refused, naming it
        with pytest.raises(PgBackupError, match=re.escape(f"refuses {dest}: it is not empty")):
            _restore(backup, dest, {str(ts_bak): str(testbed.scratch_dir(f"dcf-ts-other-{pg_major}"))})

        _recover(restored)
        log = restored.log_file.read_text(errors="replace")
        assert "consistent recovery state reached" in log, log[-3000:]
        assert restored.sql("SELECT pg_is_in_recovery()") == [(False,)], log[-3000:]
        assert restored.sql("SELECT answer FROM dcf_canary") == [(42,)]
        assert restored.sql("SELECT count(*) FROM dcf_ts_t") == [(1000,)]
        assert restored.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'dcf_ts'") == [(str(ts_new),)]
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql("DROP TABLE IF EXISTS dcf_ts_t, dcf_canary")
        primary.sql("DROP TABLESPACE IF EXISTS dcf_ts")
