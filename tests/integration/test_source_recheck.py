"""The standby_backup role trusts the standby's files only while the standby stays the backup's source: real PostgreSQL
13 and 18 (local pair), with the copy frozen while the standby is promoted, and a data directory of another cluster given
as the standby's. Each run must refuse, naming what it found, and leave nothing running."""

from __future__ import annotations

import threading
import time

import pytest

from .conftest import one_end, role_majors
from .support.faults import RECHECK, promote_during_the_copy
from .support.roles import check_mode_vars, check_run, clean_after_failure, nothing_happened, role_run

pytestmark = [pytest.mark.integration]


def _oldest_and_newest(pg_major: int) -> None:
    if pg_major not in role_majors():
        pytest.skip("the role's checks are the same on every version: the oldest and newest show them")


@pytest.mark.parametrize("wal_source", ["standby_pg_wal", "archive"])
def test_a_standby_promoted_during_the_copy_fails_at_once(primary_standby, testbed, ansible_env, tmp_path, pg_major, wal_source):
    one_end(pg_major, "newest" if wal_source == "standby_pg_wal" else "oldest")
    primary, standby = primary_standby
    primary.sql("CREATE TABLE IF NOT EXISTS recheck_bulk AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 100000) g")
    standby.wait_replayed(primary.current_lsn())
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-recheck-{wal_source.replace('_', '-')}")
    seen: dict = {}
    promoter = threading.Thread(target=promote_during_the_copy, args=(standby, seen), daemon=True)
    promoter.start()
    began = time.monotonic()
    try:
        code, output = role_run(
            ansible_env,
            testbed,
            tmp_path,
            primary,
            standby,
            restored.datadir,
            standby_backup_wal_source=wal_source,
            standby_backup_archive_dir=str(primary.archive_dir),
        )
    finally:
        seen["done"] = True
        promoter.join(timeout=120)
    seconds = time.monotonic() - began
    print(f"the promoted standby's run failed after {seconds:.1f} s (frozen copy: {seen.get('frozen')})")
    assert seen.get("promoted"), "the test did not promote the standby during the run"
    assert code != 0, output[-3000:]
    assert f'failed in "{RECHECK}"' in output, output[-3000:]
    assert "promoted" in output and f"{standby.host}:{standby.port}" in output and "discard this copy" in output, output[-3000:]
    assert "The backup was aborted" in output and (restored.datadir / ".pgbackup-incomplete").exists()
    assert standby.sql("SELECT pg_is_in_recovery()") == [(False,)]
    clean_after_failure(primary, standby, tmp_path)
    assert list((tmp_path / "keepers").glob("*/aborted.json")), "the backup on the primary was aborted, not left running"


def test_another_clusters_data_dir_is_refused_before_anything_starts(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    _oldest_and_newest(pg_major)
    primary, standby = primary_standby
    other = testbed.new_primary(pg_major, name=f"pg{pg_major}-recheck-other")
    other_sysid = other.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    standby_sysid = standby.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    dest = testbed.scratch_dir(f"sb-recheck-wrongdir-{pg_major}")
    code, output = role_run(ansible_env, testbed, tmp_path, primary, standby, dest, standby_backup_source_data_dir=str(other.datadir))
    assert code != 0
    assert "Check that the data directory to copy is the standby's" in output, output[-3000:]
    for words in (other_sysid, standby_sysid, str(other.datadir), f"{standby.host}:{standby.port}", "standby_backup_source_data_dir"):
        assert words in output, (words, output[-3000:])
    nothing_happened(primary, standby, tmp_path / "keepers")
    assert list(dest.iterdir()) == []
    # --check meets the same refusal (preflight runs before the plan)
    checked = check_run(
        ansible_env,
        testbed,
        tmp_path,
        "standby_backup.yml",
        check_mode_vars(primary, standby, dest, tmp_path / "keepers", standby_backup_source_data_dir=str(other.datadir)),
    )
    assert checked.returncode != 0 and "Check that the data directory to copy is the standby's" in checked.stdout + checked.stderr, checked.stdout[-3000:]
    assert other_sysid in checked.stdout + checked.stderr
    nothing_happened(primary, standby, tmp_path / "keepers")
    # The positive control is every other role test: the standby's own directory passes this check.
    other.stop()
