"""volume_snapshot on real btrfs: two filesystems on loop files (a data directory's subvolume on one, a tablespace's on
the other), through ansible with the installed module. The snapshots are read-only subvolumes holding the files as
they were, the data directory's volume is snapshotted last, a nested subvolume is refused, a failed snapshot leaves
nothing behind, and release deletes the set, also twice."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from .support.snapshots import btrfs_filesystem, subvolume, volume_snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
SMALL_FS = 128 << 20  # btrfs' smallest is 109 MiB with its default profiles


@pytest.fixture
def volumes(tmp_path):
    with ExitStack() as stack:
        a = stack.enter_context(btrfs_filesystem(tmp_path / "a.img", tmp_path / "fsA", SMALL_FS))
        b = stack.enter_context(btrfs_filesystem(tmp_path / "b.img", tmp_path / "fsB", SMALL_FS))
        data = subvolume(a / "pgdata") / "15"
        (data / "global").mkdir(parents=True)
        (data / "global" / "pg_control").write_bytes(b"control at start")
        ts = subvolume(b / "ts1")
        (ts / "PG_15_1").mkdir()
        (ts / "PG_15_1" / "16384").write_bytes(b"tablespace page")
        yield a, b, data, ts


def _readonly(path: str) -> bool:
    shown = subprocess.run(["btrfs", "property", "get", "-ts", path, "ro"], capture_output=True, text=True, check=True)
    return shown.stdout.strip() == "ro=true"


def test_a_set_of_two_filesystems_snapshotted_data_directory_last_then_released(volumes, ansible_env, tmp_path):
    a, _b, data, ts = volumes
    paths = [str(ts), str(data)]
    made = volume_snapshot(ansible_env, tmp_path, name="b1", paths=paths)
    assert made.get("changed") is True, made
    assert made["order"] == [str(ts), str(a / "pgdata")]
    assert [v["fstype"] for v in made["volumes"]] == ["btrfs", "btrfs"]
    (data / "global" / "pg_control").write_bytes(b"control after the snapshot")
    in_snapshot = Path(made["paths"][str(data)])
    assert (in_snapshot / "global" / "pg_control").read_bytes() == b"control at start"
    assert (Path(made["paths"][str(ts)]) / "PG_15_1" / "16384").read_bytes() == b"tablespace page"
    assert all(_readonly(v["snapshot"]) for v in made["volumes"])
    assert str(in_snapshot).startswith(str(a / ".pgbackup-snapshots" / "b1") + "/")
    with pytest.raises(OSError):
        (in_snapshot / "global" / "new").write_bytes(b"x")  # read-only

    listed = volume_snapshot(ansible_env, tmp_path, name="b1", paths=paths, action="list")
    assert listed["changed"] is False and all(v["exists"] for v in listed["volumes"])
    released = volume_snapshot(ansible_env, tmp_path, name="b1", paths=paths, action="release")
    assert released["changed"] is True and not os.path.exists(made["volumes"][0]["snapshot"])
    again = volume_snapshot(ansible_env, tmp_path, name="b1", paths=paths, action="release")
    assert again["changed"] is False, again
    assert (data / "global" / "pg_control").read_bytes() == b"control after the snapshot"  # the live file untouched


def test_a_nested_subvolume_is_refused_unless_it_is_one_of_the_paths(volumes, ansible_env, tmp_path):
    a, _b, data, ts = volumes
    wal = subvolume(data / "pg_wal")
    refused = volume_snapshot(ansible_env, tmp_path, name="b2", paths=[str(ts), str(data)])
    assert refused.get("failed") and "another volume" in refused["msg"] and str(wal) in refused["msg"], refused
    assert not (a / ".pgbackup-snapshots").exists()
    covered = volume_snapshot(ansible_env, tmp_path, name="b2", paths=[str(ts), str(wal), str(data)])
    assert covered.get("changed") is True, covered
    assert covered["order"][-1] == str(a / "pgdata") and str(wal) in covered["order"]
    volume_snapshot(ansible_env, tmp_path, name="b2", paths=[str(ts), str(wal), str(data)], action="release")


def test_a_snapshot_that_fails_releases_what_was_made(volumes, ansible_env, tmp_path):
    a, b, data, ts = volumes
    # A btrfs that refuses the second volume, the real one for the rest: the first snapshot must be deleted again.
    wrapper = tmp_path / "btrfs-failing"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"snapshot -r {a}"*) echo "ERROR: quota exceeded" >&2; exit 1;; esac\nexec btrfs "$@"\n')
    wrapper.chmod(0o700)
    failed = volume_snapshot(ansible_env, tmp_path, name="b3", paths=[str(ts), str(data)], btrfs_command=str(wrapper))
    assert failed.get("failed") and "quota exceeded" in failed["msg"] and "Released the 1 snapshot(s)" in failed["msg"], failed
    assert not list((b / ".pgbackup-snapshots").glob("*/*"))
    listed = subprocess.run(["btrfs", "subvolume", "list", str(b)], capture_output=True, text=True, check=True).stdout
    assert ".pgbackup-snapshots" not in listed
