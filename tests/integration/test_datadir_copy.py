"""datadir_copy and backup_manifest against real PostgreSQL 13-18: a copy under the low-level API on the test bed's
primary, compared with pg_basebackup (15), verified by pg_verifybackup (15: with WAL and four kinds of damage; 13, 14,
16: WAL skipped), refused by postgres before its label is placed; a killed copy keeps the incomplete marker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest

from .harness.pgbins import ROOT
from .support.copies import place_label, postgres_refuses, start_backup, stop_backup, tree, verifybackup

pytestmark = pytest.mark.integration


def test_copy_manifest_verify(lone_primary, testbed, pg_major, tmp_path):
    """The copy equals pg_basebackup's file list (15); pg_verifybackup accepts its manifest and reports damage."""
    primary = lone_primary  # it makes a tablespace: not on the shared pair (conftest.lone_primary)
    ts_src = testbed.scratch_dir(f"dc-ts-src-{pg_major}")
    ts_dst = testbed.scratch_dir(f"dc-ts-dst-{pg_major}")
    dest = testbed.scratch_dir(f"dc-copy-{pg_major}")
    tmpfile = primary.datadir / "base" / "pgsql_tmp" / "pgsql_tmp99999.0"
    temp_conn = primary.connect()
    try:
        primary.sql(f"CREATE TABLESPACE dc_canary LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE dc_canary_t TABLESPACE dc_canary AS SELECT g FROM generate_series(1, 1000) g")
        primary.sql("CREATE UNLOGGED TABLE dc_unlogged AS SELECT g FROM generate_series(1, 10000) g")
        primary.sql("CREATE UNLOGGED TABLE dc_unlogged_ts TABLESPACE dc_canary AS SELECT g FROM generate_series(1, 100) g")
        primary.sql("CHECKPOINT")
        with temp_conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE dc_temp AS SELECT g FROM generate_series(1, 1000) g")
        tmpfile.parent.mkdir(mode=0o700, exist_ok=True)
        tmpfile.write_bytes(b"temporary")
        for path in (tmpfile.parent, tmpfile):
            shutil.chown(path, "postgres", "postgres")
        (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'dc_canary'")[0]
        unlogged = {r[0] for r in primary.sql("SELECT pg_relation_filepath(c) FROM unnest(ARRAY['dc_unlogged'::regclass, 'dc_unlogged_ts'::regclass]) c")}
        with temp_conn.cursor() as cur:
            cur.execute("SELECT pg_relation_filepath('dc_temp')")
            (temp_rel,) = cur.fetchone()

        source = Source(str(primary.datadir))
        conn = primary.connect()
        try:
            start_backup(conn, pg_major)
            plan = make_plan(source, str(dest), {oid: str(ts_dst)}, [])
            check_destination(source, plan, str(dest), False)
            result = execute(source, plan, str(dest), parallel=2, owner="postgres", progress_file=str(tmp_path / "progress.json"))
            stop_lsn, stop_tli, label, spcmap = stop_backup(conn, pg_major)
        finally:
            conn.close()
        assert result["files"] > 100
        got = tree(dest)
        assert os.readlink(dest / "pg_tblspc" / oid) == str(ts_dst)
        assert any(p.startswith(f"PG_{pg_major}_") for p in os.listdir(ts_dst))
        for rel in unlogged:
            assert rel not in got, rel
            assert f"{rel}_init" in got, rel
        assert (primary.datadir / temp_rel).exists() and temp_rel not in got
        assert not [p for p in got if "pgsql_tmp" in p]
        assert "global/pg_control" not in got

        # PostgreSQL refuses the copy while pg_control is pending
        assert "pg_control" in postgres_refuses(primary, dest, tmp_path)

        if pg_major == 15:
            bb = testbed.scratch_dir("dc-basebackup-15", owner="root")
            ts_bb = testbed.scratch_dir("dc-ts-bb-15", owner="root")
            bbp = primary.client("pg_basebackup", "-D", str(bb), "-Fp", "-X", "none", "--no-sync", "-c", "fast", "-T", f"{ts_src}={ts_bb}", check=False)
            assert bbp.returncode == 0, bbp.stderr
            ours = (got - {copy_state.CHECKSUMS_FILE, copy_state.PENDING_CONTROL}) | {"global/pg_control"}
            theirs = tree(bb) - {"backup_label", "backup_manifest"}
            assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))

        place_label(dest, label, spcmap)
        info = write_manifest(str(dest), end_lsn=stop_lsn, end_tli=stop_tli)
        assert info["reused_checksums"] == info["files"] - 2  # all but backup_label and tablespace_map
        assert not (dest / copy_state.CHECKSUMS_FILE).exists()
        if pg_major >= 17:
            assert (dest / "backup_manifest").read_bytes().startswith(b'{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": ')
        ok = verifybackup(pg_major, "-n", str(dest))  # this major's own tool, on every major
        assert ok.returncode == 0, ok.stderr
        with_wal = verifybackup(pg_major, "-w", str(primary.archive_dir), str(dest))
        assert with_wal.returncode == 0, with_wal.stderr

        # four kinds of damage, each reported
        victim = dest / "base" / "1" / "1259"
        data = bytearray(victim.read_bytes())
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))
        truncated = dest / "base" / "1" / "1249"
        truncated.write_bytes(truncated.read_bytes()[:8192])
        (dest / "extra-file").write_bytes(b"x")
        # a database's PG_VERSION, not the top one: 18's pg_verifybackup takes a directory without it for a tar-format backup
        os.unlink(dest / "base" / "1" / "PG_VERSION")
        bad = verifybackup(pg_major, "-n", str(dest))
        assert bad.returncode != 0
        assert '"base/1/1259" has checksum mismatch' in bad.stderr or "checksum mismatch" in bad.stderr, bad.stderr
        assert '"base/1/1249" has size 8192 on disk' in bad.stderr, bad.stderr
        assert '"extra-file" is present on disk but not in the manifest' in bad.stderr, bad.stderr
        assert '"base/1/PG_VERSION" is present in the manifest but not on disk' in bad.stderr, bad.stderr
    finally:
        temp_conn.close()
        if tmpfile.exists():
            tmpfile.unlink()
        primary.sql("DROP TABLE IF EXISTS dc_unlogged, dc_unlogged_ts, dc_canary_t")
        primary.sql("DROP TABLESPACE IF EXISTS dc_canary")


def test_a_tablespace_inside_the_data_directory_is_copied_once(testbed, pg_major, tmp_path):
    """A tablespace located inside PGDATA (PostgreSQL warns but allows it) is copied once, as the tablespace, with its
    directory left empty in the copy: the same file list as pg_basebackup -T."""
    if pg_major != 15:  # not spot_check: its fallback to the newest selected major would run Debian's 15 client against it
        pytest.skip("pg_basebackup of the same major is Debian's 15; the copy's rule is the same on every version: runs on 15 only")
    primary = testbed.new_primary(pg_major, name=f"pg{pg_major}-dc-inner")  # of its own: no standby replays the location
    inner = primary.datadir / "inner"
    inner.mkdir(mode=0o700)
    shutil.chown(inner, "postgres", "postgres")
    primary.sql(f"CREATE TABLESPACE dc_inner LOCATION '{inner}'")
    primary.sql("CREATE TABLE dc_inner_t TABLESPACE dc_inner AS SELECT g, repeat('i', 200) AS pad FROM generate_series(1, 20000) g")
    primary.sql("CHECKPOINT")
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'dc_inner'")[0]
    dest, ts_dst = testbed.scratch_dir(f"dc-inner-copy-{pg_major}"), testbed.scratch_dir(f"dc-inner-ts-{pg_major}")
    source = Source(str(primary.datadir))
    conn = primary.connect()
    try:
        start_backup(conn, pg_major)
        plan = make_plan(source, str(dest), {oid: str(ts_dst)}, [])
        execute(source, plan, str(dest), parallel=2, owner="postgres", progress_file=str(tmp_path / "progress.json"))
        stop_backup(conn, pg_major)
    finally:
        conn.close()
    assert (dest / "inner").is_dir() and not any((dest / "inner").iterdir()), sorted(os.listdir(dest / "inner"))
    relation = primary.sql("SELECT pg_relation_filepath('dc_inner_t')")[0][0]  # pg_tblspc/<oid>/PG_.../<db>/<rel>
    assert (ts_dst / relation.split("/", 2)[2]).stat().st_size == (primary.datadir / relation).stat().st_size
    bb, ts_bb = testbed.scratch_dir(f"dc-inner-bb-{pg_major}", owner="root"), testbed.scratch_dir(f"dc-inner-bb-ts-{pg_major}", owner="root")
    bbp = primary.client("pg_basebackup", "-D", str(bb), "-Fp", "-X", "none", "--no-sync", "-c", "fast", "-T", f"{inner}={ts_bb}", check=False)
    assert bbp.returncode == 0, bbp.stderr
    ours = (tree(dest) - {copy_state.CHECKSUMS_FILE, copy_state.PENDING_CONTROL}) | {"global/pg_control"}
    theirs = tree(bb) - {"backup_label", "backup_manifest"}
    assert ours == theirs, (sorted(ours - theirs)[:20], sorted(theirs - ours)[:20])
    primary.stop()


KILL_SCRIPT = """
import sys
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, execute, make_plan
src, dest = sys.argv[1], sys.argv[2]
execute(Source(src), make_plan(Source(src), dest, {}, []), dest, owner=None)
"""


def test_killed_copy_keeps_marker(testbed):
    """SIGKILL of the copy (and its rsync) midway leaves .pgbackup-incomplete, which other modules refuse."""
    src = testbed.scratch_dir("dc-kill-src", owner="root")
    dest = testbed.scratch_dir("dc-kill-dst", owner="root")
    (src / "global").mkdir()
    (src / "PG_VERSION").write_text("15\n")
    (src / "global" / "pg_control").write_bytes(b"\0" * 8192)
    (src / "base" / "1").mkdir(parents=True)
    for i in range(4):
        with open(src / "base" / "1" / f"{16384 + i}", "wb") as f:
            f.write(os.urandom(1 << 20) * 256)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "build" / "collections"))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(src), str(dest)], cwd=str(ROOT), env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (dest / copy_state.INCOMPLETE_MARKER).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert copy_state.is_incomplete(str(dest))
    assert not (dest / copy_state.PENDING_CONTROL).exists()
    with pytest.raises(Exception, match="unfinished copy"):
        write_manifest(str(dest), end_lsn=1, end_tli=1)
