"""replica_clone with replica_clone_copy_method=snapshot on real btrfs, on the local test bed: a standby whose data
directory and one tablespace live on two btrfs filesystems is cloned, under pgbench on the primary, into WRITABLE
snapshots of both volumes on the same host (pg_control's last), coordinated through the primary or from the standby
alone. The clone streams from the standby, equals the primary table by table once caught up, passes amcheck, and its
data directory is a btrfs snapshot of the standby's subvolume: nothing was copied. A rerun changes nothing.

Negative controls: a clone on another filesystem is refused before anything starts (no slot, no backup, no snapshot);
a snapshot that fails (on the data directory's volume, the second) aborts the backup and leaves no clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from .conftest import spot_check
from .support.restore_checks import TABLES, amcheck, fingerprints
from .support.roles import clean_after_failure, run_clone, run_to_end
from .support.snapshots import snapshot_pair
from .support.waiting import KEEPERS, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.majors(13, 18),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
ROWS = 20000


def _clone_vars(testbed, primary, standby, clone, data_dir: Path, ts_dest: Path, tmp_path, mode: str, **overrides) -> dict:
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
    settings = f"-c port={clone.port} -c unix_socket_directories={clone.socket_dir} -c listen_addresses={clone.host}"
    return {
        "replica_clone_hosts": testbed.hosts[0].name,
        "replica_clone_copy_method": "snapshot",
        "replica_clone_upstream_host": standby.host,
        "replica_clone_upstream_port": standby.port,
        "replica_clone_upstream_data_dir": str(standby.datadir),
        "replica_clone_primary_host": primary.host if mode == "coordinated" else "",
        "replica_clone_primary_port": primary.port,
        "replica_clone_login_password": primary.password,
        "replica_clone_data_dir": str(data_dir),
        "replica_clone_tablespace_mapping": {oid: str(ts_dest)},
        "replica_clone_state_dir": str(tmp_path / "keepers"),
        "replica_clone_application_name": clone.name,
        "replica_clone_pg_bindir": str(clone.pg.bindir),
        "replica_clone_pg_ctl_options": ["-o", settings],
        "replica_clone_log_file": str(clone.log_file),
        "replica_clone_address": clone.host,
        "replica_clone_port": clone.port,
        "replica_clone_timeout": 300,
        **overrides,
    }


def _subvolume_show(path: Path) -> dict:
    shown = subprocess.run(["btrfs", "subvolume", "show", str(path)], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, f"{path} is not a btrfs subvolume: {shown.stderr}"
    return dict(re.findall(r"^\s*([A-Za-z ]+?):\s+(.*)$", shown.stdout, re.M))


def _delete_subvolumes(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True, check=False)


def _places(standby, ts_dir, name: str) -> tuple:
    """(the clone's data directory, the snapshot that holds it, the clone's tablespace) on the standby's two volumes."""
    data_volume, ts_volume = standby.base / "volA", ts_dir.parent
    return data_volume / name / "data", data_volume / name, ts_volume / f"{name}-ts"


@pytest.mark.parametrize(("mode", "preferred"), [("coordinated", 13), ("standby_only", 18)])
def test_a_clone_from_writable_snapshots_under_load_streams_and_equals_the_primary(testbed, ansible_env, tmp_path, pg_major, mode, preferred):
    spot_check(pg_major, (preferred,), f"the {mode} clone from snapshots")
    with ExitStack() as stack:
        primary, standby, ts_dir = stack.enter_context(snapshot_pair(testbed, pg_major, tmp_path / "images", ROWS))
        clone = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-snapclone-{mode.replace('_', '-')}")
        data_dir, snapshot, ts_dest = _places(standby, ts_dir, "clone1")
        os.symlink(data_dir, clone.datadir)  # the harness reaches the clone there; the role is given the real place
        stack.callback(_delete_subvolumes, snapshot, ts_dest)
        stack.callback(lambda: clone.stop("immediate") if clone.is_running() else None)
        extra = _clone_vars(testbed, primary, standby, clone, data_dir, ts_dest, tmp_path, mode)
        inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        with testbed.load(primary, 600, clients=2) as load:
            time.sleep(1)
            first = run_clone(ansible_env, inventory, extra)
            assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
            again = run_clone(ansible_env, inventory, extra)
            load.stop()
        assert again.returncode == 0, again.stdout[-4000:]
        assert re.search(r"ok=\d+\s+changed=0\s", again.stdout) and "nothing to do" in again.stdout, again.stdout[-3000:]
        assert primary.password not in first.stdout + again.stdout
        # nothing was copied: the clone's data directory and tablespace are writable snapshots of the standby's subvolumes
        source = _subvolume_show(standby.base / "volA" / "pgdata")
        shown = _subvolume_show(snapshot)
        assert shown["Parent UUID"] == source["UUID"] and "readonly" not in shown.get("Flags", ""), shown
        assert _subvolume_show(ts_dest)["Parent UUID"] == _subvolume_show(ts_dir)["UUID"]
        (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
        assert os.readlink(data_dir / "pg_tblspc" / oid) == str(ts_dest), "the clone uses its own tablespace"
        assert clone.sql("SELECT pg_tablespace_location(%s::oid)", (oid,)) == [(str(ts_dest),)]
        wait_for(
            lambda: standby.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'", (clone.name,)) == [(1,)],
            "the clone streaming from the standby",
        )
        wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench's sessions ending")
        (lsn,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
        standby.wait_replayed(lsn)
        clone.wait_replayed(lsn)
        assert fingerprints(clone, TABLES) == fingerprints(primary, TABLES)
        assert clone.sql("SELECT count(*), sum(v) FROM snap_t") == primary.sql("SELECT count(*), sum(v) FROM snap_t")
        amcheck(clone, pg_major)
        assert standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgbackup_%'") == [(0,)], "the backup's slot is dropped"
        clone.stop("fast")
        testbed.clusters.remove(clone)


def test_a_clone_on_another_filesystem_or_a_failing_snapshot_leaves_nothing(testbed, ansible_env, tmp_path, pg_major):
    spot_check(pg_major, (18,), "the clone's refusals and failures (the role's logic)")
    with ExitStack() as stack:
        primary, standby, ts_dir = stack.enter_context(snapshot_pair(testbed, pg_major, tmp_path / "images", ROWS))
        clone = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-snapclone-refused")
        testbed.clusters.remove(clone)  # never started
        inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
        data_dir, snapshot, ts_dest = _places(standby, ts_dir, "clone2")
        stack.callback(_delete_subvolumes, snapshot, ts_dest)

        elsewhere = testbed.scratch_dir(f"snapclone-elsewhere-{primary.port}") / "clone" / "data"  # not on the standby's btrfs
        refused = run_clone(ansible_env, inventory, _clone_vars(testbed, primary, standby, clone, elsewhere, ts_dest, tmp_path, "coordinated"))
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "not on the btrfs filesystem" in output and str(elsewhere.parent) in output and "replica_clone_data_dir" in output, output[-4000:]
        assert f"{standby.host}:{standby.port}" in output and "Nothing was started (no slot, no backup) and no snapshot was made" in output
        assert "Refuse the clone's snapshots" in output and "Start the backup for the clone" not in output, output[-4000:]
        assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)] and primary.sql(KEEPERS) == [(0,)]
        assert not list((tmp_path / "keepers").glob("*/started.json")), "no backup was started"
        assert not elsewhere.exists() and not ts_dest.exists()

        base = _clone_vars(testbed, primary, standby, clone, data_dir, ts_dest, tmp_path, "coordinated")
        code, planned = run_to_end(ansible_env, inventory, "clone_replica.yml", base, "--check")
        assert code == 0 and f"writable btrfs snapshots of {ts_dir}, {standby.datadir} at {ts_dest}, {data_dir}" in planned, planned[-4000:]
        assert not data_dir.exists() and not ts_dest.exists() and not list((tmp_path / "keepers").glob("*/started.json")), "--check made nothing"
        assert standby.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]
        for change, expected in (
            ({"replica_clone_upstream_ssh_host": "db-elsewhere"}, "but its files are on db-elsewhere (replica_clone_upstream_ssh_host)"),
            ({"replica_clone_tablespace_mapping": {}}, f"has the tablespace(s) {ts_dir}, which replica_clone_tablespace_mapping does not map"),
        ):
            refused = run_clone(ansible_env, inventory, {**base, **change})
            assert refused.returncode != 0 and expected in refused.stdout, refused.stdout[-4000:]
            assert "Nothing was started (no slot, no backup)" in refused.stdout and "Start the backup for the clone" not in refused.stdout
        existing = testbed.scratch_dir(f"snapclone-existing-{primary.port}")
        (existing / "PG_VERSION").write_text(f"{pg_major}\n")
        refused = run_clone(ansible_env, inventory, {**base, "replica_clone_data_dir": str(existing), "replica_clone_force": True})
        assert refused.returncode != 0 and "makes a clone only where nothing is yet: it does not re-seed" in refused.stdout, refused.stdout[-4000:]
        assert not list((tmp_path / "keepers").glob("*/started.json")) and not data_dir.exists(), "nothing was started or made"

        # the real btrfs, but the data directory's volume (snapshotted second, after the tablespace's) fails
        wrapper = tmp_path / "btrfs-failing"
        wrapper.write_text(
            f'#!/bin/sh\ncase "$*" in *"snapshot {snapshot.parent / "pgdata"} "*) echo "ERROR: quota exceeded" >&2; exit 1;; esac\nexec btrfs "$@"\n'
        )
        wrapper.chmod(0o700)
        extra = _clone_vars(testbed, primary, standby, clone, data_dir, ts_dest, tmp_path, "coordinated", replica_clone_snapshot_btrfs_command=str(wrapper))
        failed = run_clone(ansible_env, inventory, extra)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "quota exceeded" in output and "Deleted the 1 writable snapshot(s)" in output, output[-6000:]
        assert "The backup was aborted on" in output and "No clone is left" in output, output[-6000:]
        assert not snapshot.exists() and not ts_dest.exists(), "no clone and no snapshot is left"
        clean_after_failure(primary, standby, tmp_path)
