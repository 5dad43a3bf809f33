"""datadir_copy from btrfs snapshots of a running standby whose data directory and tablespace are on two filesystems
(#16): with source_snapshot_paths it reads the tablespace from the tablespace's snapshot, not live through the data
directory snapshot's pg_tblspc link (which still points at the live location). A table created after the snapshots
(replayed by the standby, so live on the standby) is not in the copy, an older one is; the copy's link points at the
mapped place. Without the tablespace's snapshot in the map the copy is refused and writes nothing."""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest

from .support.snapshots import run_on_localhost, standby_on_two_volumes, volume_snapshot

# The translation is on paths only, the same on every major: the version with the most copy tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.majors(15),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
SNAPSHOT = "snapcopy"


@pytest.fixture
def standby_snapshotted(testbed, pg_major, tmp_path, ansible_env):
    """A standby on two btrfs volumes, both snapshotted (released after the test, whatever happens), and a table
    created in the tablespace after the snapshots, replayed by the standby. Yields (standby, tablespace directory,
    its OID, snapshot paths, the old table's and the new table's file relative to the tablespace directory)."""
    primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-snapcopy{len(testbed.clusters)}")
    ts_src = testbed.scratch_dir(f"snapcopy-ts-{primary.port}", shared=True)
    primary.sql(f"CREATE TABLESPACE snapcopy_ts LOCATION '{ts_src}'")
    primary.sql("CREATE TABLE snapcopy_old TABLESPACE snapcopy_ts AS SELECT g FROM generate_series(1, 5000) g")
    primary.sql("CHECKPOINT")
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snapcopy_ts'")[0]
    images = tmp_path / "images"
    images.mkdir()
    with standby_on_two_volumes(testbed, primary, "snapcopy_ts", images) as (standby, ts_dir), ExitStack() as release:
        paths = [str(ts_dir), str(standby.datadir)]
        made = volume_snapshot(ansible_env, tmp_path, name=SNAPSHOT, paths=paths)
        release.callback(volume_snapshot, ansible_env, tmp_path, name=SNAPSHOT, paths=paths, action="release")
        assert made.get("changed") is True, made
        primary.sql("CREATE TABLE snapcopy_new TABLESPACE snapcopy_ts AS SELECT g FROM generate_series(1, 5000) g")
        standby.wait_replayed(primary.current_lsn())
        old, new = (_in_tablespace(standby, table, oid) for table in ("snapcopy_old", "snapcopy_new"))
        frozen_ts = Path(made["paths"][str(ts_dir)])
        assert (ts_dir / new).exists() and not (frozen_ts / new).exists(), "the live tablespace has a file its snapshot lacks"
        assert (frozen_ts / old).exists()
        yield standby, ts_dir, oid, made["paths"], old, new
    testbed.discard(primary)


def _in_tablespace(standby, table: str, oid: str) -> str:
    """The table's file, relative to its tablespace's directory."""
    (rel,) = standby.sql("SELECT pg_relation_filepath(%s::regclass)", (table,))[0]
    prefix = f"pg_tblspc/{oid}/"
    assert rel.startswith(prefix), rel
    return rel[len(prefix) :]


def test_the_tablespace_is_read_from_its_snapshot(standby_snapshotted, testbed, ansible_env, tmp_path):
    standby, ts_dir, oid, snapshot_paths, old, new = standby_snapshotted
    dest = testbed.scratch_dir("snapcopy-dest")
    ts_dest = testbed.scratch_dir("snapcopy-ts-dest")
    frozen_data = snapshot_paths[str(standby.datadir)]
    assert os.readlink(Path(frozen_data) / "pg_tblspc" / oid) == str(ts_dir), "the snapshot's link points at the live tablespace"
    args = {"source_path": frozen_data, "data_dir": str(dest), "tablespace_mapping": {oid: str(ts_dest)}, "source_snapshot_paths": snapshot_paths}
    result = run_on_localhost(ansible_env, tmp_path, "datadir_copy", args)
    assert result.get("failed") is not True, result.get("msg")
    (ts,) = result["tablespaces"]
    assert ts == {"oid": oid, "source": str(ts_dir), "dest": str(ts_dest), "in_place": False, "read_from": snapshot_paths[str(ts_dir)]}
    assert os.readlink(dest / "pg_tblspc" / oid) == str(ts_dest)
    assert (ts_dest / old).stat().st_size > 0, "the older table is copied"
    assert not (ts_dest / new).exists(), "the table created after the snapshots is not: the tablespace was read from its snapshot"


def test_a_tablespace_without_its_snapshot_is_refused(standby_snapshotted, testbed, ansible_env, tmp_path):
    standby, ts_dir, oid, snapshot_paths, _old, _new = standby_snapshotted
    dest = testbed.scratch_dir("snapcopy-refused")
    ts_dest = testbed.scratch_dir("snapcopy-ts-refused")
    only_data = {str(standby.datadir): snapshot_paths[str(standby.datadir)]}
    args = {
        "source_path": only_data[str(standby.datadir)],
        "data_dir": str(dest),
        "tablespace_mapping": {oid: str(ts_dest)},
        "source_snapshot_paths": only_data,
    }
    result = run_on_localhost(ansible_env, tmp_path, "datadir_copy", args)
    assert result.get("failed") is True, result
    assert f"tablespace {oid} is at {ts_dir}, which no source_snapshot_paths key covers (keys: {standby.datadir})" in result["msg"], result["msg"]
    assert "Snapshot its volume too: add its path to the snapshot set" in result["msg"]
    assert (result["tablespace"], result["location"], result["snapshot_keys"]) == (oid, str(ts_dir), [str(standby.datadir)])
    assert os.listdir(dest) == [] and os.listdir(ts_dest) == [], "nothing is written"
