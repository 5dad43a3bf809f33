"""datadir_copy's stream transport (transport: stream) across namespace hosts, PostgreSQL 15: db3 pulls db1's data
directory over ssh with two streams and 8 MiB pieces, so a 200 MiB table segment is split across both streams.

- A copy under the low-level backup API: every file's bytes equal the source's (sha256sum run on db1 over ssh),
  the recorded checksums are those bytes, and the copy is a backup pg_verifybackup accepts with its WAL.
- A test-only file removed while the senders are frozen (SIGSTOP) is reported as vanished; the copy succeeds.
- A test-only file truncated while they are frozen is copied as it now is, its checksum that of those bytes.
- A sender killed mid-copy fails the copy with a message naming the source host; the incomplete marker stays, no
  checksums are recorded and no sender is left running on the source.
- A destination whose filesystem fills after the precheck fails the copy with ENOSPC named and the marker kept.
The copy runs in db3's namespace through copy_engine (make_plan, check_destination, execute), as the module does."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest

from .harness.pgbins import ROOT
from .support.copies import place_label, start_backup, stop_backup, verifybackup
from .support.faults import small_filesystem

pytestmark = [pytest.mark.integration, pytest.mark.netns]

MAJOR = 15
MIB = 1 << 20
PIECE = 8 * MIB
MARKER = "pgbackup-stream-sender"

# Runs in db3's namespace: plan, precheck, optional ballast (the disk filling after the precheck), stream copy.
RUNNER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
a = json.loads(sys.argv[1])
t0 = time.monotonic()
try:
    source = Source(a["path"], a["host"], "postgres", None, None, a["ssh_options"])
    plan = make_plan(source, a["dest"], {}, [])
    check_destination(source, plan, a["dest"], False)
    if a.get("ballast"):
        os.makedirs(a["dest"], exist_ok=True)
        st = os.statvfs(a["dest"])
        with open(os.path.join(os.path.dirname(a["dest"]), "ballast"), "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - a["ballast"]))
    out = execute(source, plan, a["dest"], parallel=2, transport="stream", piece_size=a["piece"])
    out["ok"] = True
except PgBackupError as exc:
    out = {"ok": False, "msg": exc.message}
out["elapsed"] = round(time.monotonic() - t0, 3)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def source(netns_testbed):
    """A primary on db1 with a 200 MiB table (frozen, checkpointed; autovacuum off so its files stay still)."""
    bed = netns_testbed
    primary = bed.new_primary(MAJOR, host=bed.host("db1"), name=f"pg{MAJOR}-stream-primary")
    primary.sql("ALTER SYSTEM SET autovacuum = off")
    primary.sql("SELECT pg_reload_conf()")
    primary.sql("CREATE TABLE big AS SELECT g, repeat('x', 160) AS pad FROM generate_series(1, 1000000) g")
    primary.sql("VACUUM (FREEZE) big")
    primary.sql("CHECKPOINT")
    (rel,) = primary.sql("SELECT pg_relation_filepath('big')")[0]
    assert os.path.getsize(primary.datadir / rel) > 16 * PIECE
    yield primary, rel
    bed.discard(primary)


def start_copy(bed, primary, dest: Path, **extra) -> subprocess.Popen:
    args = {"path": str(primary.datadir), "host": bed.host("db1").address, "ssh_options": bed.network.ssh_options(), "dest": str(dest), "piece": PIECE}
    argv = [sys.executable, "-c", RUNNER, json.dumps({**args, **extra}), str(ROOT / "build" / "collections")]
    return bed.host("db3").popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.strip(), err
    return json.loads(out.strip().splitlines()[-1])


def senders() -> list:
    """Pids of the sender programs (and their shells) on the source, run as postgres (our ssh client runs as root)."""
    got = subprocess.run(["pgrep", "-u", "postgres", "-f", MARKER], capture_output=True, text=True, check=False)
    return [int(p) for p in got.stdout.split()]


def freeze_senders(count: int = 2, timeout: float = 30) -> list:
    """SIGSTOP the senders as soon as ``count`` of them run (they are then somewhere in the big file's pieces)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = senders()
        if len(pids) >= count:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            return pids
        time.sleep(0.005)
    raise AssertionError("the stream senders did not start on db1")


def source_sums(bed, primary) -> dict:
    """SHA-256 of every file under base/ and global/ as sha256sum on db1 computes it (over ssh, as postgres)."""
    script = 'cd "$1" && find base global -type f -print0 | xargs -0 sha256sum'
    got = bed.ssh(bed.host("db1"), ["sh", "-c", script, "sh", str(primary.datadir)], user="postgres")
    assert got.returncode == 0, got.stderr
    return {line[66:]: line[:64] for line in got.stdout.splitlines()}


def test_stream_copy_is_byte_exact_and_a_valid_backup(netns_testbed, source):
    bed = netns_testbed
    primary, big = source
    dest = bed.run_dir / "scratch" / "stream-copy"
    conn = primary.connect()
    try:
        start_backup(conn, MAJOR)
        result = finish(start_copy(bed, primary, dest))
        theirs = source_sums(bed, primary)  # still in backup mode, no load: the source as it was copied
        stop_lsn, stop_tli, label, spcmap = stop_backup(conn, MAJOR)
    finally:
        conn.close()
    print(f"stream copy of {result.get('bytes')} bytes, {result.get('files')} files: {result.get('elapsed')} s")
    assert result["ok"], result
    assert result["vanished"] == [] and not copy_state.is_incomplete(str(dest))
    recorded = json.loads((dest / copy_state.CHECKSUMS_FILE).read_text())["files"]
    mine = {rel for rel in recorded if rel.split("/")[0] in ("base", "global")}
    assert {os.path.basename(rel) for rel in set(theirs) - mine} <= {"pg_internal.init"}  # left out as in a base backup
    assert mine <= set(theirs)
    for rel in mine:
        path = dest / (copy_state.PENDING_CONTROL if rel == "global/pg_control" else rel)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[rel][2] == theirs[rel], rel
    assert big in mine
    assert (dest / big).stat().st_size > 16 * PIECE  # split in 8 MiB pieces over both streams
    place_label(dest, label, spcmap)
    info = write_manifest(str(dest), end_lsn=stop_lsn, end_tli=stop_tli)
    assert info["reused_checksums"] == info["files"] - 1  # all but backup_label (no tablespace_map)
    ok = verifybackup(MAJOR, "-w", str(primary.archive_dir), str(dest))
    assert ok.returncode == 0, ok.stderr


def test_a_file_vanishing_mid_copy_is_reported_not_fatal(netns_testbed, source):
    bed = netns_testbed
    primary, _big = source
    probe = primary.datadir / "base" / "stream_vanish_probe"
    probe.write_bytes(os.urandom(4096))
    os.chown(probe, *_ids())
    dest = bed.run_dir / "scratch" / "stream-vanish"
    proc = start_copy(bed, primary, dest)
    pids = freeze_senders()
    probe.unlink()
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    result = finish(proc)
    print(f"vanished: {result}")
    assert result["ok"], result
    assert result["vanished"] == ["base/stream_vanish_probe"]
    assert not (dest / "base" / "stream_vanish_probe").exists() and not copy_state.is_incomplete(str(dest))


def test_a_file_shrinking_mid_copy_is_copied_as_it_now_is(netns_testbed, source):
    """A relation truncated during the backup (VACUUM, TRUNCATE) is shorter when its pieces are read than when it was
    listed: the pieces past its new end bring nothing, the copy holds what the file now has, and the recorded SHA-256
    is of those bytes (WAL replay redoes the truncation)."""
    bed = netns_testbed
    primary, _big = source
    probe = primary.datadir / "base" / "stream_shrink_probe"
    head = os.urandom(4096)
    probe.write_bytes(head + os.urandom(3 * PIECE))  # four pieces, after the 200 MiB table's (largest first)
    os.chown(probe, *_ids())
    dest = bed.run_dir / "scratch" / "stream-shrink"
    try:
        proc = start_copy(bed, primary, dest)
        pids = freeze_senders()  # in the big table's pieces: the probe's are still to come
        os.truncate(probe, len(head))
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        result = finish(proc)
    finally:
        probe.unlink()
    print(f"shrunk: {result}")
    assert result["ok"] and result["vanished"] == [], result
    copied = (dest / "base" / "stream_shrink_probe").read_bytes()
    assert copied == head, f"the copy holds the file as it now is ({len(copied)} bytes, the source has {len(head)})"
    recorded = json.loads((dest / copy_state.CHECKSUMS_FILE).read_text())["files"]
    assert recorded["base/stream_shrink_probe"][2] == hashlib.sha256(head).hexdigest()
    assert not copy_state.is_incomplete(str(dest))


def test_a_killed_stream_fails_the_copy_naming_the_host(netns_testbed, source):
    bed = netns_testbed
    primary, _big = source
    dest = bed.run_dir / "scratch" / "stream-killed"
    proc = start_copy(bed, primary, dest)
    pids = freeze_senders()
    pythons = [p for p in pids if Path(f"/proc/{p}/comm").read_text().strip().startswith("python")]
    os.kill(pythons[0], signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    result = finish(proc)
    print(f"killed stream: {result}")
    assert not result["ok"]
    assert f"stream transport from {bed.host('db1').address}: the stream ended before the copy was complete (ssh exit code 255" in result["msg"], result
    assert "the copy is incomplete" in result["msg"], result
    assert copy_state.is_incomplete(str(dest)) and not (dest / copy_state.CHECKSUMS_FILE).exists()
    assert not (dest / copy_state.PENDING_CONTROL).exists()
    time.sleep(0.5)
    assert senders() == []  # the other stream was ended too


def test_a_full_destination_fails_with_enospc_named(netns_testbed, source, tmp_path):
    bed = netns_testbed
    primary, _big = source
    with small_filesystem(tmp_path, size=512 * MIB) as mnt:
        dest = mnt / "copy"
        result = finish(start_copy(bed, primary, dest, ballast=32 * MIB))  # room for less than the 200 MiB table
        print(f"full destination: {result}")
        assert not result["ok"]
        assert f"the destination {dest} ran out of space" in result["msg"] and "No space left on device" in result["msg"], result
        assert copy_state.is_incomplete(str(dest)) and not (dest / copy_state.CHECKSUMS_FILE).exists()
        time.sleep(0.5)
        assert senders() == []


def _ids() -> tuple:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid
