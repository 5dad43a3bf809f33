"""btrfs volumes for the snapshot tests: filesystems on loop files, subvolumes, and a streaming standby whose data
directory and one tablespace live on two separate btrfs filesystems (the layout whose snapshot order decides whether a
standby-only backup is consistent)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..harness.cluster import chown_postgres
from ..harness.pgbins import ROOT

ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
# Sparse loop files: only what is written takes disk. A standby under pgbench for a whole role run and restore keeps up to
# max_wal_size (1 GB) of WAL, more while the backup's slot holds it. With 512 MB a standby stopped during a long loaded
# run (the teardown's stop failed; a profile run with pgbench scale 5 showed the full volume as the cause), so 4 GiB.
# btrfs' smallest is 109 MiB with its default profiles.
FS_SIZE = 4 << 30


@contextmanager
def btrfs_filesystem(image: Path, mount_point: Path, size: int = FS_SIZE, also_for: tuple = ()):
    """A fresh btrfs on the loop file ``image``, mounted at ``mount_point``; unmounted and removed after.

    ``also_for``: pids (the namespace hosts' sshd) whose mount namespace must see it too. ``ip netns exec`` gave each
    its own copy of the mounts, and this machine's / is private, so a mount made here later never reaches them: the
    same loop device is mounted there as well (the same filesystem, seen from both)."""
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, capture_output=True)
    mount_point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True, capture_output=True)
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount_point)], check=True, capture_output=True, text=True).stdout.strip()
    others = [pid for pid in also_for if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")]
    try:
        for pid in others:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", device, str(mount_point)], check=True, capture_output=True)
        yield mount_point
    finally:
        for pid in others:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", "-l", str(mount_point)], check=False, capture_output=True)
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        if os.path.ismount(mount_point):
            subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def subvolume(path: Path, owner: str = "root") -> Path:
    subprocess.run(["btrfs", "subvolume", "create", str(path)], check=True, capture_output=True)
    if owner == "postgres":
        chown_postgres(path)
    return path


def volume_snapshot(ansible_env: dict, cwd: Path, **args) -> dict:
    """The module through ``ansible localhost``; its result, with ``failed`` set as the one-line callback leaves it out."""
    return run_on_localhost(ansible_env, cwd, "volume_snapshot", args)


def run_on_localhost(ansible_env: dict, cwd: Path, module: str, args: dict) -> dict:
    """A module of the collection through ``ansible localhost``; its result, ``failed`` set (the one-line callback
    leaves it out)."""
    argv = [ANSIBLE, "localhost", "-c", "local", "-m", f"pgbackup.lowlevel.{module}", "-a", json.dumps(args), "-o"]
    proc = subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=300, check=False, cwd=cwd)
    head, _sep, body = proc.stdout.strip().partition(" => ")
    result = json.loads(body) if body else {"failed": True, "msg": proc.stdout + proc.stderr}
    result.setdefault("failed", "FAILED" in head)
    return result


def _tablespace_oid(primary, name: str) -> str:
    return str(primary.sql("SELECT oid FROM pg_tablespace WHERE spcname = %s", (name,))[0][0])


@contextmanager
def standby_on_two_volumes(testbed, primary, tablespace: str, images: Path, size: int = FS_SIZE, host=None):
    """A standby of ``primary`` (which has ``tablespace``) whose data directory is on one btrfs and the tablespace on
    another. Yields (standby, tablespace directory on the standby). The standby gets its own copy of the tablespace:
    on one machine the primary's and a standby's tablespace would otherwise be the same directory."""
    oid = _tablespace_oid(primary, tablespace)
    (source_ts,) = primary.sql("SELECT pg_tablespace_location(%s::oid)", (oid,))[0]
    standby = testbed._cluster(primary.major, host or primary.node, f"pg{primary.major}-btrfs{testbed._next_serial()}", "standby", upstream=primary)
    standby._make_dirs()
    with ExitStack() as stack:
        sshd = tuple(h.sshd_pid for h in testbed.hosts if h.sshd_pid)  # what arrives over ssh sees the volumes too
        data_fs = stack.enter_context(btrfs_filesystem(images / "data.img", standby.base / "volA", size, sshd))
        ts_fs = stack.enter_context(btrfs_filesystem(images / "ts.img", standby.base / "volB", size, sshd))
        data_dir = subvolume(data_fs / "pgdata") / "data"
        ts_dir = subvolume(ts_fs / "ts", owner="postgres")
        primary.stop("fast")  # a clean shutdown: the copy needs no WAL beyond what it contains
        try:
            subprocess.run(["cp", "-a", str(primary.datadir), str(data_dir)], check=True)
            subprocess.run(["cp", "-a", f"{source_ts}/.", str(ts_dir)], check=True)
        finally:
            primary.start()
        os.symlink(data_dir, standby.datadir)
        link = data_dir / "pg_tblspc" / oid
        link.unlink()
        os.symlink(ts_dir, link)
        os.lchown(link, *_postgres_ids())
        (data_dir / "postmaster.opts").unlink(missing_ok=True)
        standby.write_settings()
        (data_dir / "standby.signal").touch()
        chown_postgres(data_dir / "standby.signal")
        standby.start()
        try:
            standby.wait_streaming()
            yield standby, ts_dir
        finally:
            standby.stop("fast")
            testbed.clusters.remove(standby)


def _postgres_ids() -> tuple:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@contextmanager
def snapshot_pair(testbed, pg_major: int, images: Path, rows: int, size: int = FS_SIZE, standby_host=None):
    """A primary with tablespace snap_ts (table snap_t of ``rows`` rows, pgbench tables, amcheck) and its standby on two
    btrfs filesystems (standby_on_two_volumes), on ``standby_host`` (default: the primary's). Yields (primary, standby, the
    standby's tablespace directory)."""
    primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-snapprimary{len(testbed.clusters)}")
    ts_src = testbed.scratch_dir(f"snapshot-ts-{primary.port}", shared=True)
    primary.sql(f"CREATE TABLESPACE snap_ts LOCATION '{ts_src}'")
    primary.sql("CREATE TABLE snap_t (id int PRIMARY KEY, v int) TABLESPACE snap_ts")
    primary.sql("INSERT INTO snap_t SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    images.mkdir(exist_ok=True)
    with standby_on_two_volumes(testbed, primary, "snap_ts", images, size, standby_host) as (standby, ts_dir):
        yield primary, standby, ts_dir
    testbed.discard(primary)


def kept_snapshot_release(ansible_env: dict, inventory: Path, tmp_path: Path, host: str, kept: Path) -> tuple:
    """standby_backup's entry point release_kept on ``host`` for the kept backup ``kept``: (exit code, output)."""
    playbook = tmp_path / "release-kept.yml"
    playbook.write_text(
        f"- hosts: {host}\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: pgbackup.lowlevel.standby_backup\n        tasks_from: release_kept\n"
        f"      vars:\n        standby_backup_dest: {json.dumps(str(kept))}\n"
    )
    argv = [ANSIBLE.replace("/ansible", "/ansible-playbook"), "-i", str(inventory), str(playbook)]
    proc = subprocess.run(argv, env=ansible_env, capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr
