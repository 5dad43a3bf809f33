# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore test stops exactly at the backup's end point although the copy holds WAL beyond it, on an overlay that
leaves the copy unchanged (SHA-256 of the tree before and after); negative control: an end point before consistency is
refused, naming it."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.restore_test import run_restore_test

from .conftest import spot_check
from .support.copies import verified_backup

pytestmark = pytest.mark.integration


def _tree_digest(root: Path) -> str:
    """SHA-256 over every path, mode, owner, link target and file content below root."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode}\0{info.st_uid}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def test_restore_test_stops_at_the_end_point(primary_standby, testbed, tmp_path, pg_major):
    spot_check(pg_major, (13, 18), "recovery to a target LSN works alike from 13 on; the oldest and newest")
    primary, _standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    dest = testbed.scratch_dir(f"rt-copy-{pg_major}")
    canary = f"rt_canary_{uuid.uuid4().hex[:8]}"
    try:
        started, stopped = verified_backup(primary, testbed, tmp_path, dest, {}, canary)
        label_placer.place(str(dest), label=base64.b64decode(stopped["backup_label_base64"]), expected_start_lsn=started["start_lsn"])
        primary.sql("SELECT pg_switch_wal()")  # WAL beyond the end point, archived: the restore test must not replay it
        primary.sql(f"CREATE TABLE {canary}_after AS SELECT 1 AS x")
        primary.sql("SELECT pg_switch_wal()")
        testbed_wait = [p for p in primary.archive_dir.iterdir() if len(p.name) == 24]
        for seg in sorted(testbed_wait):
            shutil.copy2(seg, dest / "pg_wal" / seg.name)
            shutil.chown(dest / "pg_wal" / seg.name, "postgres", "postgres")
            os.chmod(dest / "pg_wal" / seg.name, 0o600)
        before = _tree_digest(dest)
        kwargs = {"major": pg_major, "bindir": str(primary.pg.bindir), "wal_dir": str(dest / "pg_wal"), "tablespaces": {}}
        rt = run_restore_test(str(dest), scratch_dir=None, port=None, timeout=300, end_lsn=parse_lsn(stopped["stop_lsn"]), **kwargs)
        assert rt["ok"] is True, (rt["problems"], rt["log"])
        assert rt["method"] == "overlay" and rt["replay_lsn"] == stopped["stop_lsn"] == rt["end_lsn"], rt
        assert rt["amcheck"]["ran"] is True and rt["amcheck"]["ok"] is True and "postgres" in rt["amcheck"]["databases"], rt["amcheck"]
        assert rt["promoted"] is True and rt["upper_bytes"] > 0, rt
        print(f"restore test pg{pg_major}: {rt['seconds']} s, upper_bytes {rt['upper_bytes']}")
        assert _tree_digest(dest) == before  # the copy below the overlay is unchanged
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".pgbackup-restore-test-")]

        # negative control: an end point before consistency (the backup's start) is refused, and the server says why
        early = run_restore_test(str(dest), scratch_dir=None, port=None, timeout=300, end_lsn=parse_lsn(started["start_lsn"]), **kwargs)
        assert early["ok"] is False, early
        assert any("before consistent recovery point" in p and started["start_lsn"] in p for p in early["problems"]), early["problems"]
        assert _tree_digest(dest) == before
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".pgbackup-restore-test-")]
    finally:
        primary.sql(f"DROP TABLE IF EXISTS {canary}, {canary}_after")


def test_restore_test_refuses_a_mixed_copy(primary_standby, testbed, tmp_path, pg_major):
    """A standby-only copy whose pg_control was copied first (mixed_copy.py) is refused at its end point (its
    minRecoveryPoint): verify_heapam finds tuples of transactions after it. The same backup done right passes."""
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.restore_test import end_point

    from .mixed_copy import standby_only_copy

    if pg_major < 14:
        pytest.skip("amcheck 1.2 (PostgreSQL 13) has no verify_heapam; bt_index_check(heapallindexed) passes this copy (measured)")
    spot_check(pg_major, (18,), "verify_heapam is the same from 14 on: the newest shows it")
    primary, standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    standby.wait_replayed()
    from_standby = type("Label", (), {"backup_from": "standby"})()
    results = {}
    for control_first in (False, True):
        dest = testbed.scratch_dir(f"rt-mixed-{pg_major}-{control_first}")
        state = tmp_path / f"keepers-{control_first}"
        state.mkdir(mode=0o700)
        made = standby_only_copy(primary, standby, testbed, dest, state, control_first=control_first, backup_id=f"rtm{int(control_first)}")
        end = end_point(from_standby, read_control_file(str(dest)), made["stop_lsn"])
        kwargs = {"major": pg_major, "bindir": str(primary.pg.bindir), "wal_dir": str(dest / "pg_wal"), "tablespaces": {}}
        results[control_first] = run_restore_test(str(dest), scratch_dir=None, port=None, timeout=300, end_lsn=end, **kwargs)
    good, mixed = results[False], results[True]
    assert good["ok"] is True and good["amcheck"]["ok"] is True, (good["problems"], good["log"])
    assert mixed["ok"] is False, mixed
    assert any("amcheck at the end point" in p and "equals or exceeds next valid transaction ID" in p for p in mixed["problems"]), mixed["problems"]
