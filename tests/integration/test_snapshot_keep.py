"""standby_backup_snapshot_keep: the snapshot set is the backup. A standby-only snapshot backup across namespace hosts under
pgbench (primary on db1, the standby's data directory and tablespace on two btrfs filesystems on db2, the role on db3)
copies nothing: its destination holds the label, the WAL and the record, and the set outlives the run. backup_restore on
db3 recognises the record, copies the files out of the snapshots over ssh, places the label and the WAL and recovers to
the primary's end point (tables equal, amcheck and pg_checksums clean). No manifest is made for a kept backup (see
docs/snapshots.md), so pg_verifybackup has nothing to check. Once the set is released (tasks_from: release_kept, twice:
idempotent) the same restore is refused before it writes anything. keep without copy_method snapshot is refused in the
preflight, before any server is asked."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from contextlib import ExitStack

import pytest

from .conftest import spot_check
from .harness.pgbins import ROOT
from .support.restore_checks import TABLES, amcheck, archived, checksums_clean, fingerprints
from .support.roles import SSH_OPTIONS, backup_vars, restore_vars, start_playbook
from .support.snapshots import kept_snapshot_release, snapshot_pair
from .support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    # the role's keeping and restoring of a set: the snapshot procedure itself runs on 13 and 18 in test_standby_backup_snapshot.py
    pytest.mark.majors(18),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
ROWS = 20000
ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")


@pytest.fixture
def kept_bed(netns_testbed, pg_major, tmp_path):
    spot_check(pg_major, (18,), "keeping the snapshot set as the backup")
    with ExitStack() as stack:  # not a bare with: pylint (contextmanager-generator-missing-cleanup)
        yield stack.enter_context(snapshot_pair(netns_testbed, pg_major, tmp_path / "images", ROWS, standby_host=netns_testbed.host("db2")))


def _snapshots_left(standby, ts_dir) -> list:
    return sorted(str(p) for v in (standby.base / "volA", ts_dir.parent) for p in (v / ".pgbackup-snapshots").glob("*/*"))


def _tree_size(path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(path) for f in files)


def _restore(bed, ansible_env, tmp_path, kept, restored, primary, name: str, **overrides) -> subprocess.CompletedProcess:
    extra = restore_vars(
        bed, kept, restored, primary,
        backup_restore_hosts="db3",
        backup_restore_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"),
        backup_restore_ssh_options=SSH_OPTIONS,
        **overrides,
    )  # fmt: skip
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra_file = tmp_path / f"extra-{name}.json"
    extra_file.write_text(json.dumps(extra))
    extra_file.chmod(0o600)
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks" / "restore_backup.yml"), "-e", f"@{extra_file}"]
    return subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=900, check=False)


def test_a_kept_snapshot_is_the_backup_and_restores_until_it_is_released(kept_bed, netns_testbed, ansible_env, tmp_path, pg_major):
    bed = netns_testbed
    primary, standby, ts_dir = kept_bed
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
    kept = bed.scratch_dir(f"kept-{primary.port}")
    keepers = tmp_path / "keepers"
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    extra = backup_vars(
        "db3", primary, standby, kept, keepers,
        standby_backup_mode="standby_only",
        standby_backup_copy_method="snapshot",
        standby_backup_snapshot_keep=True,
        standby_backup_source_ssh_host=standby.node.address,
        standby_backup_ssh_key=str(bed.run_dir / "ssh" / "id_ed25519"),
        standby_backup_ssh_options=SSH_OPTIONS,
        standby_backup_snapshot_host="db2",
        standby_backup_pg_bindir=str(primary.pg.bindir),
        standby_backup_progress_interval=2,
    )  # fmt: skip
    with bed.load(primary, 600, clients=2) as load:
        time.sleep(1)
        proc = start_playbook(ansible_env, inventory, extra)
        stdout, stderr = proc.communicate(timeout=900)
        output = stdout + stderr
        assert proc.returncode == 0, output[-8000:]
        primary.sql("CREATE TABLE kept_canary AS SELECT 42 AS answer")
        load.stop()
    assert primary.password not in output, "the password is never printed"

    # The destination: label, map, WAL, the pending pg_control and the record - no data files.
    names = sorted(os.listdir(kept))
    assert names == ["backup_label", "global", "pg_wal", "snapshot_set.json", "tablespace_map"], names
    assert os.listdir(kept / "global") == ["pg_control.pgbackup-pending"]
    assert not (kept / "base").exists() and _tree_size(kept) - _tree_size(kept / "pg_wal") < 64 * 1024, "nothing was copied"
    assert sorted(os.listdir(kept / "pg_wal")), "the WAL from the start to the stop is kept beside the label"
    assert stat.S_IMODE(os.stat(kept / "snapshot_set.json").st_mode) == 0o600
    record = json.loads((kept / "snapshot_set.json").read_text())
    assert record["host"] == "db2" and record["provider"] == "btrfs" and record["paths"][-1] == str(standby.datadir), record
    assert set(record["snapshot_paths"]) == set(record["paths"]), record
    # The set outlives the run, and the keeper's record of it is put aside: an abort after this never releases a kept backup.
    assert len(_snapshots_left(standby, ts_dir)) == 2, "the kept set is not released"
    (keeper_dir,) = [p.parent for p in keepers.glob("*/started.json")]
    assert not (keeper_dir / "snapshot_set.json").exists() and (keeper_dir / "snapshot_set.kept.json").exists()

    # Restored on db3 from the kept snapshot, to the primary's end point.
    wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench's sessions ending")
    (target,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    primary.sql("SELECT pg_switch_wal()")
    wait_for(lambda: archived(primary, target), "the target's segment being archived")
    db3 = bed.host("db3")
    restored = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-keptrestore")
    ts_dest = bed.scratch_dir(f"kept-ts-{restored.port}")
    try:
        run = _restore(
            bed, ansible_env, tmp_path, kept, restored, primary, "restore",
            backup_restore_tablespace_mapping={oid: str(ts_dest)},
            backup_restore_target="lsn", backup_restore_target_value=target, backup_restore_target_action="pause",
            backup_restore_restore_command=f"cp {primary.archive_dir}/%f %p",
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        result = re.search(r'"backup_restore_result": (\{.*?\n    \})', run.stdout, re.S)
        assert result and json.loads(result.group(1))["verified"] is True, run.stdout[-3000:]
        assert json.loads(result.group(1))["kept_snapshot"] == f"{record['name']} on db2", result.group(1)
        assert sorted(os.listdir(ts_dest)), "the tablespace was copied to its mapped place"
        log = restored.log_file.read_text(errors="replace")
        assert "consistent recovery state reached" in log, log[-4000:]
        assert restored.sql("SELECT answer FROM kept_canary") == [(42,)]
        assert fingerprints(restored, TABLES) == fingerprints(primary, TABLES)
        assert restored.sql("SELECT count(*), sum(v) FROM snap_t") == primary.sql("SELECT count(*), sum(v) FROM snap_t")
        amcheck(restored, pg_major)
        restored.stop("fast")
        checksums_clean(restored)
        assert primary.password not in run.stdout + run.stderr
    finally:
        if restored.is_running():
            restored.stop("immediate")

    # Released (twice: the second finds nothing), the kept backup is refused before anything is written.
    for attempt in ("release", "again"):
        code, released = kept_snapshot_release(ansible_env, inventory, tmp_path, "db3", kept)
        assert code == 0, released[-4000:]
        assert ("changed=1" if attempt == "release" else "changed=0") in released, released[-3000:]
        assert _snapshots_left(standby, ts_dir) == [], "the release removed the whole set"
    refused = bed.empty_cluster(pg_major, host=db3, name=f"pg{pg_major}-keptrefused")
    run = _restore(bed, ansible_env, tmp_path, kept, refused, primary, "refused", backup_restore_tablespace_mapping={oid: str(tmp_path / "ts-refused")})
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    assert f"kept as the snapshot set {record['name']} on db2 (standby_backup_snapshot_keep)" in output, output[-4000:]
    assert "the set is gone there" in output and f"Nothing was written to {refused.datadir}" in output, output[-4000:]
    assert not refused.datadir.exists() or os.listdir(refused.datadir) == [], "the refused restore wrote nothing"
    assert not (tmp_path / "ts-refused").exists()


def test_keep_without_the_snapshot_method_is_refused_before_any_server_is_asked(ansible_env, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    extra = {
        "standby_backup_hosts": "localhost",
        "standby_backup_source_host": "192.0.2.1",  # never reached: the refusal comes first
        "standby_backup_source_data_dir": "/nonexistent/data",
        "standby_backup_dest": str(tmp_path / "dest"),
        "standby_backup_snapshot_keep": True,
    }
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks" / "standby_backup.yml"), "-e", f"@{extra_file}"]
    run = subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert "standby_backup_snapshot_keep: true keeps the snapshot set as the backup, so it needs standby_backup_copy_method: snapshot" in output, output[-3000:]
    assert '(it is "copy")' in output and "Facts of the standby" not in output, output[-3000:]
    assert not (tmp_path / "dest").exists()
