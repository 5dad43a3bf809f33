"""volume_snapshot's plan, order, refusals and undo, on temporary directories posing as volumes (a mountinfo text of
our own) with a stand-in btrfs that records its calls. Real btrfs subvolumes on loop files are in
tests/integration/test_volume_snapshot.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import volume_snapshot
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.volumes import mount_of, nested_volumes, parse_mountinfo

FAKE_BTRFS = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1 $2" = "subvolume snapshot" ]; then
  case "$4" in {fail}) echo "ERROR: cannot snapshot '$4': No space left on device" >&2; exit 1;; esac
  mkdir "$5"; exit 0
fi
if [ "$1 $2" = "subvolume delete" ]; then rm -rf "$3"; exit 0; fi
exit 2
"""


def _mountinfo(*mounts) -> str:
    lines = ["22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for index, (point, fstype, device) in enumerate(mounts):
        lines.append(f"{30 + index} 22 0:{40 + index} / {point.replace(' ', chr(92) + '040')} rw - {fstype} {device} rw")
    return "\n".join(lines) + "\n"


@pytest.fixture
def bed(tmp_path, monkeypatch):
    """Two 'btrfs filesystems' A and B; the data directory on A, a tablespace on B; a stand-in btrfs."""
    a, b = tmp_path / "fsA", tmp_path / "fsB"
    data, ts = a / "pg" / "data", b / "ts1"
    for d in (data / "global", ts / "PG_15"):
        d.mkdir(parents=True)
    log = tmp_path / "btrfs.log"
    fake = tmp_path / "btrfs"
    mounts = parse_mountinfo(_mountinfo((str(a), "btrfs", "/dev/loop0"), (str(b), "btrfs", "/dev/loop1")))
    monkeypatch.setattr(volume_snapshot, "read_mounts", lambda: mounts)

    def params(fail: str = "__none__", **extra) -> dict:
        fake.write_text(FAKE_BTRFS.format(log=log, fail=fail))
        fake.chmod(0o700)
        base = dict(name="b20261207", paths=[str(ts), str(data)], provider="btrfs", btrfs_command=str(fake), action="create")
        return {**base, **extra}

    class Bed:
        pass

    bed = Bed()
    bed.a, bed.b, bed.data, bed.ts, bed.log, bed.params = a, b, data, ts, log, params
    bed.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return bed


def test_mountinfo_unescapes_and_the_longest_mount_point_wins():
    mounts = parse_mountinfo(_mountinfo(("/mnt/a b", "btrfs", "/dev/loop0"), ("/mnt/a", "xfs", "/dev/sdb"), ("/mnt/ab", "ext4", "/dev/sdc")))
    assert mounts[1].mount_point == "/mnt/a b"
    assert mount_of("/mnt/a b/data", mounts).fstype == "btrfs"
    assert mount_of("/mnt/ab/data", mounts).fstype == "ext4"  # not /mnt/a: a prefix of the name is not a parent
    assert mount_of("/mnt/a/data", mounts).fstype == "xfs"
    assert mount_of("/srv/x", mounts).fstype == "ext4" and mount_of("/srv/x", mounts).mount_point == "/"


def test_the_data_directory_volume_is_snapshotted_last_whatever_the_order_of_the_other_paths(bed):
    ts2 = bed.a / "ts2"
    ts2.mkdir()
    # ts2 is on A like the data directory, and comes first: A must still be snapshotted after B.
    result = volume_snapshot.run(bed.params(paths=[str(ts2), str(bed.ts), str(bed.data)]), check_mode=False)
    assert result["order"] == [str(bed.b), str(bed.a)]
    snapshots = [c.split()[-2] for c in bed.calls() if c.startswith("subvolume snapshot")]
    assert snapshots == [str(bed.b), str(bed.a)]
    assert result["paths"][str(bed.data)] == os.path.join(result["volumes"][1]["snapshot"], "pg", "data")
    assert result["volumes"][1]["paths"] == [str(ts2), str(bed.data)]


def test_create_makes_private_read_only_snapshots_beside_not_inside_the_live_paths(bed):
    result = volume_snapshot.run(bed.params(), check_mode=False)
    assert result["changed"] and all(v["exists"] for v in result["volumes"])
    assert all("-r" in c.split() for c in bed.calls() if c.startswith("subvolume snapshot"))
    for volume in result["volumes"]:
        snapshot = Path(volume["snapshot"])
        assert snapshot.parent.parent.name == ".pgbackup-snapshots" and snapshot.parent.name == "b20261207"
        assert stat.S_IMODE(snapshot.parent.stat().st_mode) == 0o700 and stat.S_IMODE(snapshot.parent.parent.stat().st_mode) == 0o700
        assert not str(snapshot).startswith(str(bed.data)) and not str(snapshot).startswith(str(bed.ts))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_the_set_directories_belong_to_the_owner_of_the_snapshotted_path(bed):
    # the copy reads the snapshot over ssh as the data directory's owner: root's 0700 directories shut it out
    os.chown(bed.data, 4321, 4322)
    os.chown(bed.ts, 4323, 4324)
    result = volume_snapshot.run(bed.params(), check_mode=False)
    owners = {v["paths"][0]: Path(v["snapshot"]).parent for v in result["volumes"]}
    for path, ids in ((str(bed.data), (4321, 4322)), (str(bed.ts), (4323, 4324))):
        for directory in (owners[path], owners[path].parent):
            st = directory.stat()
            assert (st.st_uid, st.st_gid) == ids and stat.S_IMODE(st.st_mode) == 0o700, (directory, st)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_the_command_providers_mount_directories_belong_to_the_owner_of_the_snapshotted_path(bed, tmp_path):
    for path in (bed.data, bed.ts):
        os.chown(path, 4321, 4322)
    params = _command_params(bed, tmp_path)
    created = volume_snapshot.run(params, check_mode=False)
    volume_snapshot.run(dict(params, action="mount"), check_mode=False)
    for volume in created["volumes"]:
        mount = Path(volume["snapshot"])
        for directory in (mount, mount.parent):
            st = directory.stat()
            assert (st.st_uid, st.st_gid) == (4321, 4322) and stat.S_IMODE(st.st_mode) == 0o700, (directory, st)


def test_check_mode_plans_and_makes_nothing(bed):
    result = volume_snapshot.run(bed.params(), check_mode=True)
    assert result["changed"] and result["order"] == [str(bed.b), str(bed.a)]
    assert bed.calls() == [] and not (bed.a / ".pgbackup-snapshots").exists()


def test_a_failed_snapshot_releases_those_made_before_it_and_says_so(bed):
    with pytest.raises(PgBackupError) as err:
        volume_snapshot.run(bed.params(fail=str(bed.a)), check_mode=False)
    message = err.value.message
    assert f"the snapshot of {bed.a}" in message and "No space left on device" in message
    assert f"Released the 1 snapshot(s) made before it ({bed.b})" in message
    assert [c.split()[:2] for c in bed.calls()] == [["subvolume", "snapshot"]] * 2 + [["subvolume", "delete"]]
    assert not list((bed.b / ".pgbackup-snapshots").rglob("*"))  # the set directory went with its last snapshot


def test_an_existing_set_is_refused_and_release_is_idempotent(bed):
    volume_snapshot.run(bed.params(), check_mode=False)
    with pytest.raises(PgBackupError, match=r"already exists for .*; expected none. Release it first"):
        volume_snapshot.run(bed.params(), check_mode=False)
    assert volume_snapshot.run(bed.params(action="release"), check_mode=True)["changed"]
    first = volume_snapshot.run(bed.params(action="release"), check_mode=False)
    assert first["changed"] and not any(v["exists"] for v in first["volumes"])
    deletes = [c.split()[-1] for c in bed.calls() if c.startswith("subvolume delete")]
    assert deletes == [first["volumes"][1]["snapshot"], first["volumes"][0]["snapshot"]]  # newest first
    assert volume_snapshot.run(bed.params(action="release"), check_mode=False)["changed"] is False


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(name="../x"), "is not a snapshot set name"),
        (dict(name=""), "is not a snapshot set name"),
        (dict(paths=[]), "paths is empty"),
        (dict(paths=["relative/data"]), "is not absolute"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(bed, change, expected):
    with pytest.raises(PgBackupError, match=expected):
        volume_snapshot.run(bed.params(**change), check_mode=False)
    assert bed.calls() == []


def test_a_path_that_is_its_volume_mount_point_is_refused_not_written_into(bed):
    with pytest.raises(PgBackupError, match=r"inside the live path .*nothing is ever written into a live data directory"):
        volume_snapshot.run(bed.params(paths=[str(bed.b)]), check_mode=False)
    assert bed.calls() == [] and not (bed.b / ".pgbackup-snapshots").exists()


def test_a_path_not_on_btrfs_is_refused_for_the_btrfs_provider(bed, tmp_path):
    other = tmp_path / "ext4data"
    other.mkdir()
    with pytest.raises(PgBackupError, match=r"is on ext4 \(/dev/sda1 at /\), not btrfs"):
        volume_snapshot.run(bed.params(paths=[str(other)]), check_mode=False)


def test_a_nested_volume_no_path_covers_is_refused(bed, monkeypatch):
    hidden = str(bed.data / "pg_wal")
    monkeypatch.setattr(volume_snapshot, "nested_volumes", lambda path: [hidden] if path == str(bed.data) else [])
    with pytest.raises(PgBackupError, match=r"holds .*pg_wal, another volume .* would show it empty"):
        volume_snapshot.run(bed.params(), check_mode=False)
    assert bed.calls() == []


def test_nested_volumes_sees_a_different_device_and_does_not_follow_symlinks(tmp_path, monkeypatch):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "link").symlink_to("/proc")  # another filesystem, through a symlink: not below the path
    assert nested_volumes(str(tmp_path / "d")) == []
    proc_like = tmp_path / "d" / "sub"
    original = os.scandir

    class Entry:
        def __init__(self, entry):
            self._entry, self.path, self.name = entry, entry.path, entry.name

        def is_dir(self, follow_symlinks=True):
            return self._entry.is_dir(follow_symlinks=follow_symlinks)

        def stat(self, follow_symlinks=True):
            st = self._entry.stat(follow_symlinks=follow_symlinks)
            if self.path == str(proc_like):
                return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *tuple(st)[3:]))
            return st

    class Scan:
        def __init__(self, path):
            self._it = original(path)

        def __enter__(self):
            return (Entry(e) for e in self._it)

        def __exit__(self, *exc):
            self._it.close()

    monkeypatch.setattr(os, "scandir", Scan)
    assert nested_volumes(str(tmp_path / "d")) == [str(proc_like)]


RECORDER = '#!/bin/sh\necho "$*" >> "{log}"\ncase "$*" in *{fail}*) echo "lvcreate: Volume group vg has insufficient free space" >&2; exit 5;; esac\n'


def _command_params(bed, tmp_path, fail: str = "__none__", **extra) -> dict:
    tool = tmp_path / "volmgr"
    tool.write_text(RECORDER.format(log=bed.log, fail=fail))
    tool.chmod(0o700)
    base = dict(
        name="b1", paths=[str(bed.ts), str(bed.data)], provider="command", action="create", mount_root=str(tmp_path / "mnt"),
        create_command=[str(tool), "create", "{device}", "pgb-{name}-{index}"],
        mount_command=[str(tool), "mount", "{snapshot_mount}"],
        release_command=[str(tool), "release", "pgb-{name}-{index}", "{mount_point}"],
    )  # fmt: skip
    return {**base, **extra}


def test_the_command_provider_runs_the_users_argv_with_the_placeholders_filled(bed, tmp_path):
    params = _command_params(bed, tmp_path)
    created = volume_snapshot.run(params, check_mode=False)
    assert bed.calls() == ["create /dev/loop1 pgb-b1-0", "create /dev/loop0 pgb-b1-1"]
    assert created["volumes"][1]["snapshot"] == str(tmp_path / "mnt" / "b1" / "1")
    assert created["paths"][str(bed.data)] == str(tmp_path / "mnt" / "b1" / "1" / "pg" / "data")
    volume_snapshot.run(dict(params, action="mount"), check_mode=False)
    assert bed.calls()[2:] == [f"mount {tmp_path}/mnt/b1/0", f"mount {tmp_path}/mnt/b1/1"]
    with pytest.raises(PgBackupError, match="already exists"):
        volume_snapshot.run(params, check_mode=False)
    released = volume_snapshot.run(dict(params, action="release"), check_mode=False)
    assert released["changed"] and bed.calls()[4:] == [f"release pgb-b1-1 {bed.a}", f"release pgb-b1-0 {bed.b}"]
    assert volume_snapshot.run(dict(params, action="release"), check_mode=False)["changed"] is False


def test_a_failed_command_snapshot_is_undone_with_the_release_command(bed, tmp_path):
    with pytest.raises(PgBackupError) as err:
        volume_snapshot.run(_command_params(bed, tmp_path, fail="/dev/loop0"), check_mode=False)
    assert "exited with 5: lvcreate: Volume group vg has insufficient free space" in err.value.message
    assert bed.calls() == ["create /dev/loop1 pgb-b1-0", "create /dev/loop0 pgb-b1-1", f"release pgb-b1-0 {bed.b}"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(create_command=["lvcreate", "{devcie}"]), r"placeholder \{devcie\}"),
        (dict(create_command=["lvcreate", "{index:03d}"]), r"placeholder \{index\}.*without format specs"),
        (dict(mount_command=["mount", "{snapshot_mount!r}"]), r"placeholder \{snapshot_mount\}"),
        (dict(release_command=["lvremove", "{"]), "malformed placeholder"),
        (dict(release_command=None), "provider=command needs release_command"),
        (dict(mount_root="relative"), "needs mount_root, an absolute directory"),
    ],
)
def test_command_options_are_checked_before_the_first_command(bed, tmp_path, change, expected):
    with pytest.raises(PgBackupError, match=expected):
        volume_snapshot.run(_command_params(bed, tmp_path, **change), check_mode=False)
    assert bed.calls() == []
