"""A standby-only backup around btrfs snapshots, the data directory and a tablespace on two separate filesystems, with
pgbench writing: the low-level API on the standby, volume_snapshot, the copy made from the snapshots after the stop.

The standby replays and flushes tablespace pages between the two snapshots on purpose (a checkpoint on the primary, its
restartpoint on the standby). With the pg_control volume snapshotted last the copy is verified and recovers to
consistency with the primary's data, amcheck and pg_checksums clean. With it snapshotted first - the order that made
hot-standby snapshot backups with tablespaces on separate volumes corrupt - backup_verify's page audit refuses the copy,
naming tablespace pages past the copied pg_control's minimum recovery point, where recovery would have declared the copy
consistent before their changes.

The procedure is driven by hand around the modules here (what the standby_backup snapshot method is to do, #16)."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn

from .support.copies import run_verify, start_backup
from .support.restore_checks import archived, checksums_clean, recover_and_check
from .support.snapshots import snapshot_pair, volume_snapshot
from .support.waiting import wait_for

# 13 has the old API (pg_start_backup(..., exclusive => false)), 18 the newest pg_control; the snapshot logic is the same.
# The good order runs on 13 and the bad one on 18 (the role's snapshot runs across hosts take standby-only on 18 and
# coordinated on 13), so each API meets a standby-only snapshot backup and a pair costs no more than one major.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.majors(13, 18),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None, reason="needs root and btrfs-progs"),
]
ROWS = 20000


@pytest.fixture
def snapshot_bed(testbed, pg_major, tmp_path):
    with ExitStack() as stack:  # not a bare with: pylint (contextmanager-generator-missing-cleanup)
        yield stack.enter_context(snapshot_pair(testbed, pg_major, tmp_path / "images", ROWS))


def _flush_tablespace_pages_on_the_standby(primary, standby) -> None:
    """Change every page of snap_t, then make the standby write them: a checkpoint on the primary, replayed, and a
    restartpoint on the standby (which raises its minimum recovery point before it writes each page)."""
    primary.sql("UPDATE snap_t SET v = v + 1")
    primary.sql("CHECKPOINT")
    standby.wait_replayed(primary.current_lsn())
    standby.sql("CHECKPOINT")


def _copy_from_snapshots(data_snapshot: Path, ts_snapshot: Path, dest: Path, ts_dest: Path, oid: str, label: str, spcmap: str) -> None:
    """The copy a snapshot backup makes, by hand (cp -a, as an independent copier): the data directory without the
    standby's own state, the tablespace in its new place, the label and a map pointing there."""
    subprocess.run(["cp", "-a", f"{data_snapshot}/.", str(dest)], check=True)
    subprocess.run(["cp", "-a", f"{ts_snapshot}/.", str(ts_dest)], check=True)
    for name in ("postmaster.pid", "postmaster.opts", "standby.signal", "backup_label.old"):
        (dest / name).unlink(missing_ok=True)
    # What a base backup leaves out (PostgreSQL's "Backing Up the Data Directory"), the WAL included: it comes from
    # the archive, from the start to the stop.
    for directory in ("pg_wal", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans", "pg_replslot"):
        for entry in (dest / directory).iterdir():
            if entry.is_file():
                entry.unlink()
            elif directory != "pg_wal":  # pg_wal keeps archive_status
                shutil.rmtree(entry)
    for junk in [*dest.rglob("pg_internal.init"), *ts_dest.rglob("pg_internal.init")]:
        junk.unlink()
    for temporary in [*dest.rglob("pgsql_tmp*"), *ts_dest.rglob("pgsql_tmp*")]:
        shutil.rmtree(temporary)
    link = dest / "pg_tblspc" / oid
    link.unlink()
    os.symlink(ts_dest, link)
    (dest / "backup_label").write_text(label)
    (dest / "tablespace_map").write_text("".join(f"{oid} {ts_dest}\n" for line in spcmap.splitlines() if line.startswith(oid + " ")))
    subprocess.run(["chown", "-R", "postgres:postgres", str(dest), str(ts_dest)], check=True)
    for name in ("backup_label", "tablespace_map"):
        (dest / name).chmod(0o600)


def _stop_on_the_standby(conn, major: int) -> tuple:
    """(stop LSN, its timeline, label, map): pg_walfile_name() is refused during recovery, so the timeline is the one
    the standby replays on."""
    stop = "pg_backup_stop(false)" if major >= 15 else "pg_stop_backup(false, false)"
    with conn.cursor() as cur:
        cur.execute(f"SELECT lsn::text, labelfile, spcmapfile FROM {stop}")  # noqa: S608 - one of two constants
        lsn, label, spcmap = cur.fetchone()
        cur.execute("SELECT timeline_id FROM pg_control_checkpoint()")
        (tli,) = cur.fetchone()
    return parse_lsn(lsn), tli, label, spcmap


def _wal_from_archive(primary, dest: Path, start_lsn: int, stop_lsn: int) -> None:
    primary.sql("SELECT pg_switch_wal()")
    wait_for(lambda: archived(primary, format_lsn(stop_lsn)), "the stop's segment being archived")
    (first,) = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (format_lsn(start_lsn),))[0]
    (last,) = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (format_lsn(stop_lsn),))[0]
    for segment in sorted(p.name for p in primary.archive_dir.iterdir() if len(p.name) == 24):
        if first <= segment <= last:
            shutil.copy2(primary.archive_dir / segment, dest / "pg_wal" / segment)
            shutil.chown(dest / "pg_wal" / segment, "postgres", "postgres")


def _standby_only_snapshot_backup(primary, standby, ts_dir, testbed, ansible_env, tmp_path, *, control_last: bool) -> tuple:
    data_dir = str(standby.datadir)
    order = [[str(ts_dir)], [data_dir]] if control_last else [[data_dir], [str(ts_dir)]]
    (oid,) = primary.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = 'snap_ts'")[0]
    made = []
    with testbed.load(primary, 60, clients=2), ExitStack() as release:
        conn = psycopg2.connect(**standby.conninfo())
        conn.autocommit = True
        try:
            start_backup(conn, standby.major)
            for name, snap_paths in zip(("first", "second"), order):
                result = volume_snapshot(ansible_env, tmp_path, name=f"snapbk-{name}", paths=snap_paths)
                assert result.get("changed") is True, result
                release.callback(volume_snapshot, ansible_env, tmp_path, name=f"snapbk-{name}", paths=snap_paths, action="release")
                made.append(result)
                if name == "first":
                    _flush_tablespace_pages_on_the_standby(primary, standby)
            stop_lsn, stop_tli, label, spcmap = _stop_on_the_standby(conn, standby.major)
        finally:
            conn.close()
        snapshots = {**made[0]["paths"], **made[1]["paths"]}
        restored = testbed.empty_cluster(standby.major)
        ts_dest = testbed.scratch_dir(f"snapshot-ts-restored-{restored.port}")
        restored.datadir.mkdir(mode=0o700)
        _copy_from_snapshots(Path(snapshots[data_dir]), Path(snapshots[str(ts_dir)]), restored.datadir, ts_dest, oid, label, spcmap)
    start_lsn = parse_lsn(label.split("START WAL LOCATION: ", 1)[1].split(" ", 1)[0])
    _wal_from_archive(primary, restored.datadir, start_lsn, stop_lsn)
    return restored, label, start_lsn, stop_lsn, stop_tli


@pytest.mark.majors(13)
def test_the_pg_control_volume_snapshotted_last_gives_a_consistent_backup(snapshot_bed, testbed, ansible_env, tmp_path, pg_major):
    primary, standby, ts_dir = snapshot_bed
    restored, _label, start_lsn, stop_lsn, tli = _standby_only_snapshot_backup(primary, standby, ts_dir, testbed, ansible_env, tmp_path, control_last=True)
    (report,) = run_verify(ansible_env, testbed, tmp_path, [(restored.datadir, {"stop_lsn": format_lsn(stop_lsn), "stop_timeline": tli})])
    assert report.get("failed") is not True, report.get("msg")
    primary.sql("CREATE TABLE snap_canary AS SELECT 42 AS answer")
    recover_and_check(
        primary, restored, testbed, ansible_env, tmp_path, pg_major,
        procedure="standby_only", start_lsn=format_lsn(start_lsn), stop_lsn=format_lsn(stop_lsn), canary="snap_canary",
    )  # fmt: skip
    assert restored.sql("SELECT count(*), sum(v) FROM snap_t") == primary.sql("SELECT count(*), sum(v) FROM snap_t")
    restored.stop("fast")
    checksums_clean(restored)  # this major's own pg_checksums


@pytest.mark.majors(18)
def test_the_pg_control_volume_snapshotted_first_is_refused_by_the_page_audit(snapshot_bed, testbed, ansible_env, tmp_path):
    primary, standby, ts_dir = snapshot_bed
    restored, _label, _start, stop_lsn, tli = _standby_only_snapshot_backup(primary, standby, ts_dir, testbed, ansible_env, tmp_path, control_last=False)
    (report,) = run_verify(ansible_env, testbed, tmp_path, [(restored.datadir, {"stop_lsn": format_lsn(stop_lsn), "stop_timeline": tli})])
    assert report.get("failed") is True, report
    assert "minimum recovery point of the copied pg_control" in report["msg"] and "pg_tblspc/" in report["msg"], report["msg"]
