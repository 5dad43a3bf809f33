"""volume_snapshot action=clone/unclone (module_utils.snapshot_clone): the places of the writable snapshots, their order
(pg_control's volume last), every refusal before a snapshot, the undo of a failed clone and the clone's preparation, on
temporary directories posing as btrfs volumes with a stand-in btrfs that copies. Real btrfs is in
tests/integration/test_replica_clone_snapshot.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import snapshot_clone, volume_snapshot
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.volumes import parse_mountinfo

# A writable snapshot is "subvolume snapshot SRC DST" (no -r): the stand-in copies SRC to DST, or fails for SRC = {fail}.
FAKE_BTRFS = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1 $2" = "subvolume snapshot" ]; then
  [ "$3" = "-r" ] && exit 3
  case "$3" in {fail}) echo "ERROR: cannot snapshot '$3': No space left on device" >&2; exit 1;; esac
  cp -a "$3" "$4"; exit 0
fi
if [ "$1 $2" = "subvolume delete" ]; then rm -rf "$3"; exit 0; fi
exit 2
"""


def _mountinfo(*mounts) -> str:
    lines = ["22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for index, (point, fstype, device) in enumerate(mounts):
        lines.append(f"{30 + index} 22 0:{40 + index} / {point} rw - {fstype} {device} rw")
    return "\n".join(lines) + "\n"


@pytest.fixture
def bed(tmp_path, monkeypatch):
    """btrfs A holds the upstream's data directory (A/pg/data, a pg_tblspc link to the tablespace), btrfs B the tablespace
    (B/ts), ext4 C another filesystem; a stand-in btrfs."""
    a, b, c = tmp_path / "fsA", tmp_path / "fsB", tmp_path / "fsC"
    data, ts = a / "pg" / "data", b / "ts"
    for d in (data / "global", data / "base" / "1", data / "pg_wal" / "archive_status", data / "pg_replslot" / "s1", data / "pg_tblspc"):
        d.mkdir(parents=True)
    (ts / "PG_15_202209061" / "16384").mkdir(parents=True)
    (ts / "PG_15_202209061" / "16384" / "pgsql_tmp").mkdir()
    for name, text in {"PG_VERSION": "15\n", "global/pg_control": "c", "base/1/1259": "r", "postmaster.pid": "1", "postmaster.opts": "o",
                       "standby.signal": "", "backup_label": "old", "pg_wal/000000010000000000000003": "w",
                       "pg_wal/archive_status/000000010000000000000003.done": "", "pg_replslot/s1/state": "s"}.items():  # fmt: skip
        (data / name).write_text(text)
    (ts / "PG_15_202209061" / "16384" / "16385").write_text("t")
    os.symlink(ts, data / "pg_tblspc" / "16400")
    c.mkdir()
    log, fake = tmp_path / "btrfs.log", tmp_path / "btrfs"
    mounts = parse_mountinfo(_mountinfo((str(a), "btrfs", "/dev/loop0"), (str(b), "btrfs", "/dev/loop1"), (str(c), "ext4", "/dev/sdc")))
    monkeypatch.setattr(snapshot_clone, "read_mounts", lambda: mounts)
    monkeypatch.setattr(volume_snapshot, "read_mounts", lambda: mounts)

    def params(fail: str = "__none__", **extra) -> dict:
        fake.write_text(FAKE_BTRFS.format(log=log, fail=fail))
        fake.chmod(0o700)
        base = dict(
            name="clone1", action="clone", provider="btrfs", btrfs_command=str(fake),
            paths=[str(ts), str(data)], dests=[str(b / "tsc" / "ts"), str(a / "clone" / "pg" / "data")],
        )  # fmt: skip
        return {**base, **extra}

    class Bed:
        pass

    bed = Bed()
    bed.a, bed.b, bed.c, bed.data, bed.ts, bed.params = a, b, c, data, ts, params
    bed.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return bed


def _snapshot_calls(bed) -> list:
    return [c.split()[2:] for c in bed.calls() if c.startswith("subvolume snapshot")]


def test_the_data_directory_volume_is_cloned_last_writable_at_the_dest_minus_its_place_in_the_subvolume(bed):
    ts2 = bed.a / "ts2"
    ts2.mkdir()
    # ts2 is on A like the data directory and comes first: A (pg_control's volume) must still be snapshotted after B.
    dests = [str(bed.a / "clone" / "ts2"), str(bed.b / "tsc" / "ts"), str(bed.a / "clone" / "pg" / "data")]
    params = bed.params(paths=[str(ts2), str(bed.ts), str(bed.data)], dests=dests)
    result = volume_snapshot.run(params, check_mode=False)
    assert result["order"] == [str(bed.b), str(bed.a)]
    assert _snapshot_calls(bed) == [[str(bed.b), str(bed.b / "tsc")], [str(bed.a), str(bed.a / "clone")]]  # no -r: writable


def test_the_clone_is_prepared_and_never_points_at_the_live_tablespace(bed):
    volume_snapshot.run(bed.params(), check_mode=False)
    clone = bed.a / "clone" / "pg" / "data"
    assert os.readlink(clone / "pg_tblspc" / "16400") == str(bed.b / "tsc" / "ts")
    for gone in ("postmaster.pid", "postmaster.opts", "standby.signal", "backup_label", "pg_wal/000000010000000000000003",
                 "pg_wal/archive_status/000000010000000000000003.done", "pg_replslot/s1"):  # fmt: skip
        assert not (clone / gone).exists(), gone
    assert (clone / "pg_wal" / "archive_status").is_dir() and (clone / "pg_replslot").is_dir() and (clone / "base/1/1259").exists()
    assert not (bed.b / "tsc" / "ts" / "PG_15_202209061" / "16384" / "pgsql_tmp").exists()
    assert (bed.b / "tsc" / "ts" / "PG_15_202209061" / "16384" / "16385").exists()
    # the live files are as they were
    assert (bed.data / "postmaster.pid").exists() and os.readlink(bed.data / "pg_tblspc" / "16400") == str(bed.ts)


def test_check_mode_plans_and_makes_nothing(bed):
    result = volume_snapshot.run(bed.params(), check_mode=True)
    assert result["changed"] and bed.calls() == [] and not (bed.a / "clone").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda bed: dict(dests=[str(bed.b / "tsc" / "ts"), str(bed.c / "clone" / "pg" / "data")]), "not on the btrfs filesystem /dev/loop0"),
        (lambda bed: dict(dests=[str(bed.a / "tsc" / "ts"), str(bed.a / "clone" / "pg" / "data")]), "not on the btrfs filesystem /dev/loop1"),
        (lambda bed: dict(dests=[str(bed.b / "tsc" / "ts"), str(bed.a / "clone" / "data")]), "must end in /pg/data"),
        (lambda bed: dict(dests=[str(bed.b / "tsc" / "ts"), str(bed.a / "nowhere" / "x" / "y" / "pg" / "data")]), "is not a directory"),
        (lambda bed: dict(dests=[str(bed.b / "tsc" / "ts"), str(bed.a / "pg" / "data" / "x" / "pg" / "data")]), "inside or around the live path"),
        (lambda bed: dict(dests=[str(bed.b / "tsc" / "ts")]), "needs one dest per path"),
        (lambda bed: dict(provider="command"), "provider=command is not supported"),
        (lambda bed: dict(dests=["ts_clone", str(bed.a / "clone" / "pg" / "data")]), "is not absolute"),
    ],
)
def test_bad_destinations_are_refused_before_any_snapshot(bed, change, expected):
    (bed.a / "nowhere").mkdir()
    with pytest.raises(PgBackupError, match=expected):
        volume_snapshot.run(bed.params(**change(bed)), check_mode=False)
    assert bed.calls() == []


def test_an_existing_clone_place_is_refused(bed):
    (bed.a / "clone").mkdir()
    with pytest.raises(PgBackupError, match="exists; a clone from a snapshot is made where nothing is yet"):
        volume_snapshot.run(bed.params(), check_mode=True)
    assert bed.calls() == []


def test_a_failed_snapshot_deletes_the_clones_made_before_it(bed):
    with pytest.raises(PgBackupError) as failure:
        volume_snapshot.run(bed.params(fail=str(bed.a)), check_mode=False)
    message = failure.value.message
    assert f"the clone failed at {bed.a}" in message and "No space left on device" in message and "the clone does not exist" in message
    assert failure.value.details["deleted"] == [str(bed.b / "tsc")]
    assert not (bed.b / "tsc" / "ts").exists() and not (bed.a / "clone").exists()


def test_a_failed_preparation_deletes_every_snapshot(bed, monkeypatch):
    def disk_gone(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(snapshot_clone, "own_wal_dir", disk_gone)
    with pytest.raises(PgBackupError, match="the clone failed at the clone's preparation: disk gone"):
        volume_snapshot.run(bed.params(), check_mode=False)
    assert not (bed.b / "tsc" / "ts").exists() and not (bed.a / "clone").exists()


def test_a_tablespace_not_in_the_paths_is_refused_and_the_clone_deleted(bed):
    os.symlink(bed.c, bed.data / "pg_tblspc" / "16500")
    with pytest.raises(PgBackupError, match=r"tablespace 16500 is at .* the clone would use the live tablespace"):
        volume_snapshot.run(bed.params(), check_mode=False)
    assert not (bed.a / "clone").exists()


def test_unclone_deletes_only_subvolume_roots_and_is_idempotent(bed, monkeypatch):
    volume_snapshot.run(bed.params(), check_mode=False)
    monkeypatch.setattr(snapshot_clone, "is_subvolume_root", lambda path: Path(path).is_dir())
    assert volume_snapshot.run(bed.params(action="unclone"), check_mode=True)["changed"]
    assert (bed.a / "clone").exists()
    assert volume_snapshot.run(bed.params(action="unclone"), check_mode=False)["changed"]
    assert not (bed.a / "clone").exists() and not (bed.b / "tsc" / "ts").exists() and bed.data.exists()
    assert not volume_snapshot.run(bed.params(action="unclone"), check_mode=False)["changed"]


def test_unclone_leaves_a_directory_that_is_not_a_subvolume(bed):
    (bed.a / "clone").mkdir()
    assert not volume_snapshot.run(bed.params(action="unclone"), check_mode=False)["changed"]
    assert (bed.a / "clone").exists()


def test_a_source_not_on_btrfs_is_refused(bed):
    data = bed.c / "pg" / "data"
    data.mkdir(parents=True)
    params = bed.params(paths=[str(bed.ts), str(data)], dests=[str(bed.b / "tsc" / "ts"), str(bed.c / "clone" / "pg" / "data")])
    with pytest.raises(PgBackupError, match=r"is on ext4 \(/dev/sdc at .*\), not btrfs; expected btrfs for a clone"):
        volume_snapshot.run(params, check_mode=True)


def test_two_paths_on_one_subvolume_need_dests_in_the_one_snapshot(bed):
    ts2 = bed.a / "ts2"
    ts2.mkdir()
    # the data directory's snapshot is at A/clone, so ts2 (on A too) is at A/clone/ts2 in it, not elsewhere
    params = bed.params(paths=[str(ts2), str(bed.data)], dests=[str(bed.a / "other" / "ts2"), str(bed.a / "clone" / "pg" / "data")])
    with pytest.raises(PgBackupError, match=r"one snapshot at .*/fsA/clone holds both: its clone is .*/fsA/clone/ts2, not .*/fsA/other/ts2"):
        volume_snapshot.run(params, check_mode=True)
    assert bed.calls() == []
