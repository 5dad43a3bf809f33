"""datadir_copy onto a destination that is too small: a 64 MiB ext4 filesystem in a loop-mounted image file
(truncate + mkfs.ext4 + mount -o loop; unmounted and removed in a finally block).

- The free-space precheck refuses a source larger than the free space, through the module itself, with a message
  naming the destination and the bytes needed; nothing is written at the destination.
- A source that grows after the precheck passed (a table growing during the copy) fills the disk midway: the copy
  fails with a message naming the destination and the lack of space, the incomplete marker stays.
In both cases the source is unchanged (a listing of every file's size, mode, mtime and SHA-256, before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError

from .harness.pgbins import ROOT
from .support.faults import MIB, small_filesystem

pytestmark = pytest.mark.integration


def fake_datadir(root: Path, sizes_mib: list) -> Path:
    """Enough of a PostgreSQL 15 data directory for datadir_copy: PG_VERSION, global/pg_control, relation files."""
    (root / "global").mkdir(parents=True)
    (root / "base" / "5").mkdir(parents=True)
    (root / "PG_VERSION").write_text("15\n")
    (root / "global" / "pg_control").write_bytes(os.urandom(8192))
    for i, size in enumerate(sizes_mib):
        with open(root / "base" / "5" / str(16384 + i), "wb") as f:
            for _chunk in range(size):
                f.write(os.urandom(MIB))
    return root


def listing(root: Path) -> dict:
    """Every file and directory under ``root``: relative path -> (kind, size, mode, mtime_ns, sha256)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if name in files:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[os.path.relpath(path, root)] = (name in dirs, st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return out


def run_module(args: dict, tmp: Path) -> dict:
    """The datadir_copy module itself, as Ansible runs it (arguments file, JSON on stdout)."""
    args_file = tmp / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "build" / "collections"))
    argv = [sys.executable, "-m", "ansible_collections.pgbackup.lowlevel.plugins.modules.datadir_copy", str(args_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(tmp), timeout=120, check=False)
    return json.loads(proc.stdout)


def test_precheck_refuses_too_little_space(tmp_path):
    src = fake_datadir(tmp_path / "src", [40, 40])  # 80 MiB on a 64 MiB filesystem
    before = listing(src)
    with small_filesystem(tmp_path) as mnt:
        dest = mnt / "pgdata"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        result = run_module({"source_path": str(src), "dest": str(dest)}, tmp_path)
        assert result.get("failed") is True, result
        needed = 80 * MIB + 8192 + 3
        assert result["msg"] == f"too little free space at the destination {dest}: the copy needs {needed} bytes, {free} are free", result
        assert (result["dest"], result["needed"], result["free"]) == (str(dest), needed, free)
        assert not dest.exists(), "the precheck runs before anything is written"
        assert sorted(os.listdir(mnt)) == ["lost+found"]
    assert listing(src) == before


def test_disk_fills_during_the_copy(tmp_path):
    """The precheck passes (16 MiB to copy); a relation then grows by 80 MiB before the copy reads it."""
    src = fake_datadir(tmp_path / "src", [8, 8])
    with small_filesystem(tmp_path) as mnt:
        dest = mnt / "pgdata"
        source = Source(str(src))
        plan = make_plan(source, str(dest), {}, [])
        check_destination(source, plan, str(dest), False)  # passes: 16 MiB of 64
        with open(src / "base" / "5" / "16385", "ab") as f:
            for _chunk in range(80):
                f.write(os.urandom(MIB))
        before = listing(src)
        with pytest.raises(PgBackupError) as failed:
            execute(source, plan, str(dest), parallel=2, owner="postgres", progress_file=str(tmp_path / "progress.json"))
        message, details = failed.value.message, failed.value.details
        needed = 96 * MIB + 8192 + 3  # what the planned files hold now
        assert message.startswith(
            f"the destination {dest} ran out of space during the copy: the copy needs {needed} bytes ({16 * MIB + 8192 + 3} when it started;"
        ), message
        assert "No space left on device" in message, message  # rsync's own words follow
        assert (details["dest"], details["needed"]) == (str(dest), needed), details
        assert copy_state.is_incomplete(str(dest)), "a failed copy keeps its incomplete marker"
        assert not (dest / copy_state.PENDING_CONTROL).exists() and not (dest / copy_state.CHECKSUMS_FILE).exists()
        with pytest.raises(PgBackupError, match="unfinished copy"):
            copy_state.check_not_incomplete(str(dest))
    assert listing(src) == before
