"""backup_verify against real PostgreSQL 13-18: a copy taken under backup_start/backup_stop with pgbench writing (a
tablespace mapped to a new path, the WAL from the archive in its pg_wal, a backup_manifest) passes, and its restore
test (a scratch copy recovered, promoted and checked with amcheck) succeeds; planted faults are each named: a missing
WAL segment in the middle, a segment of another cluster, a changed byte in a data file, an excluded file, a wrong
mode, and an unguarded copy whose backup_label was deleted."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import segments_between

from .support.copies import run_verify, verified_backup

# Where these tests run (conftest._skip_outside_its_majors): the verifier's WAL parsing runs on every major in
# test_wal_collect; whole, it runs on 13, 15 (pg_verifybackup), 17 (WAL summaries) and 18.
pytestmark = [pytest.mark.integration, pytest.mark.majors(13, 15, 17, 18)]


def _clone(testbed, src: Path, name: str) -> Path:
    dst = testbed.scratch_dir(name)
    shutil.rmtree(dst)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)  # owners and modes kept
    return dst


def _foreign_segment(testbed, pg_major: int) -> Path:
    """A complete WAL segment from the archive of another cluster of the same major."""
    other = testbed.new_primary(pg_major, name=f"pg{pg_major}-bv-other")
    try:
        other.sql("CREATE TABLE t AS SELECT 1 AS x")
        other.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            segs = sorted(p for p in other.archive_dir.iterdir() if len(p.name) == 24)
            if segs:
                return segs[0]
            time.sleep(0.2)
        pytest.fail(f"{other.name} archived nothing")
    finally:
        other.stop()
    raise AssertionError("unreachable")


def test_backup_verify(lone_primary, testbed, ansible_env, tmp_path, pg_major):
    primary = lone_primary  # it makes a tablespace: not on the shared pair (conftest.lone_primary)
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")  # so the restore test checks it at the end point, on the standby
    ts_src = testbed.scratch_dir(f"bv-ts-src-{pg_major}")
    ts_dst = testbed.scratch_dir(f"bv-ts-dst-{pg_major}")
    canary = f"bv_canary_{uuid.uuid4().hex[:8]}"
    dest = testbed.scratch_dir(f"bv-copy-{pg_major}")
    try:
        primary.sql(f"CREATE TABLESPACE bv_ts LOCATION '{ts_src}'")
        primary.sql("CREATE TABLE bv_ts_t TABLESPACE bv_ts AS SELECT g FROM generate_series(1, 1000) g")
        primary.sql("CREATE INDEX ON bv_ts_t (g)")
        started, stopped = verified_backup(primary, testbed, tmp_path, dest, {str(ts_src): str(ts_dst)}, canary)
        unguarded = _clone(testbed, dest, f"bv-unguarded-{pg_major}")  # still with its pending pg_control
        label = base64.b64decode(stopped["backup_label_base64"])
        tsmap = base64.b64decode(stopped["tablespace_map_base64"])
        mapping = {str(ts_src): str(ts_dst)}
        label_placer.place(str(dest), label=label, tablespace_map=tsmap, tablespace_mapping=mapping, expected_start_lsn=started["start_lsn"])

        stop_lsn, stop_tli = stopped["stop_lsn"], stopped["stop_timeline"]
        seg_size = read_control_file(str(dest)).xlog_seg_size
        needed = segments_between(parse_lsn(started["start_lsn"]), parse_lsn(stop_lsn), stop_tli, [], seg_size)
        assert len(needed) >= 4, needed
        for name in needed:
            shutil.copy2(primary.archive_dir / name, dest / "pg_wal" / name)
            shutil.chown(dest / "pg_wal" / name, "postgres", "postgres")
            os.chmod(dest / "pg_wal" / name, 0o600)
        write_manifest(str(dest), end_lsn=parse_lsn(stop_lsn), end_tli=stop_tli)
        faulty = _clone(testbed, dest, f"bv-faulty-{pg_major}")

        # planted faults, all in one copy
        assert needed[1] in os.listdir(faulty / "pg_wal")
        os.unlink(faulty / "pg_wal" / needed[1])
        foreign = _foreign_segment(testbed, pg_major)
        shutil.copyfile(foreign, faulty / "pg_wal" / needed[2])
        shutil.chown(faulty / "pg_wal" / needed[2], "postgres", "postgres")
        os.chmod(faulty / "pg_wal" / needed[2], 0o600)
        db_files = [p for p in (faulty / "base").rglob("*") if p.is_file() and p.name.isdigit() and p.stat().st_size >= 8192]
        victim = max(db_files, key=lambda p: p.stat().st_size)
        with open(victim, "r+b") as handle:
            handle.seek(4096)
            byte = handle.read(1)
            handle.seek(4096)
            handle.write(bytes([byte[0] ^ 0xFF]))
        victim_rel = str(victim.relative_to(faulty))
        (faulty / "global" / "pg_internal.init").write_bytes(b"stale relcache")
        shutil.chown(faulty / "global" / "pg_internal.init", "postgres", "postgres")
        os.chmod(faulty / "global" / "pg_internal.init", 0o600)
        os.chmod(faulty / "PG_VERSION", 0o644)
        # an unguarded copy whose label was deleted
        label_placer.place(str(unguarded), label=label, tablespace_map=tsmap, tablespace_mapping=mapping, guard_control=False)
        os.unlink(unguarded / "backup_label")

        # WAL whose page headers are intact but whose records are damaged: only the restore test can see it
        broken = _clone(testbed, dest, f"bv-broken-wal-{pg_major}")
        with open(broken / "pg_wal" / needed[1], "r+b") as handle:
            handle.seek(3000)
            chunk = handle.read(64)
            handle.seek(3000)
            handle.write(bytes(b ^ 0xA5 for b in chunk))

        args = {"stop_lsn": stop_lsn, "stop_timeline": stop_tli, "pg_bindir": str(primary.pg.bindir), "restore_test": True}
        copies = [(dest, args), (faulty, args), (unguarded, {"stop_lsn": stop_lsn}), (broken, args)]
        good, bad, lost, damaged = run_verify(ansible_env, testbed, tmp_path, copies)

        # the good copy passes, and a scratch copy of it recovers to consistency, is promoted and amcheck finds nothing
        assert good.get("failed") is not True and good["problems"] == [], (good["problems"], good.get("restore_test"))
        assert good["changed"] is False and good["major_version"] == pg_major
        assert good["control"]["guarded"] is True and good["label"]["start_lsn"] == started["start_lsn"]
        assert good["wal"]["checked"] == needed and good["wal"]["missing"] == []
        assert good["manifest"]["files"] == good["files"] - len(needed) - 1  # all but pg_wal's segments and the manifest
        assert list(good["tablespaces"].values()) == [str(ts_dst)]
        rt = good["restore_test"]
        assert rt["ok"] is True and rt["promoted"] is True, rt
        assert rt["replay_lsn"] == rt["end_lsn"] == stop_lsn and rt["method"] == "overlay", rt  # stopped exactly there
        assert rt["amcheck"]["databases"] == ["postgres"] and rt["amcheck_after_promotion"]["ok"] is True, rt
        assert rt["redo_start"] == started["start_lsn"], rt
        assert parse_lsn(rt["consistent_at"]) >= parse_lsn(stop_lsn), rt
        assert rt["amcheck"]["ran"] is True and rt["amcheck"]["ok"] is True, rt["amcheck"]
        assert rt["amcheck"]["method"] == ("pg_amcheck" if pg_major == 15 else "bt_index_check")
        if rt["amcheck"]["method"] == "bt_index_check":
            assert rt["amcheck"]["indexes_checked"] > 0
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".pgbackup-restore-test-")]  # scratch copy removed
        if pg_major == 15:  # Debian's 15 is the only pg_verifybackup here; another major's is never used
            assert good["pg_verifybackup"]["ran"] is True and good["pg_verifybackup"]["rc"] == 0, good["pg_verifybackup"]
            assert "-n" not in good["pg_verifybackup"]["command"] and "-w" in good["pg_verifybackup"]["command"]  # the WAL parsed
        else:
            assert good["pg_verifybackup"] == {"ran": False, "reason": f"no pg_verifybackup of PostgreSQL {pg_major} on this host"}

        # every planted fault is named, each of them
        assert bad.get("failed") is True, bad
        problems = bad["problems"]
        text = "\n".join(problems)
        assert any("are missing from" in p and needed[1] in p for p in problems), text
        assert any("belongs to another cluster" in p and needed[2] in p for p in problems), text
        assert any(f"WAL segment {needed[2]} is not valid" in p and "page address" in p for p in problems), text
        assert any("checksum not matching backup_manifest" in p and victim_rel in p for p in problems), text
        assert any("a base backup leaves out" in p and "global/pg_internal.init" in p for p in problems), text
        assert any("wrong mode" in p and "PG_VERSION (0644" in p for p in problems), text
        assert pg_major != 15 or any(p.startswith("pg_verifybackup failed") and victim_rel in p for p in problems), text
        assert bad["restore_test"]["ran"] is False and "problems" in bad["restore_test"]["reason"]
        assert "backup_verify found" in bad["msg"]

        # an unguarded copy without its label is caught before anyone starts it
        assert lost.get("failed") is True and lost["control"]["guarded"] is False, lost
        assert any("would start crash recovery from the wrong checkpoint" in p for p in lost["problems"]), lost["problems"]

        # the damaged WAL (page headers intact, a record's bytes flipped): pg_verifybackup parses the WAL (no -n) and
        # names the record; without a pg_verifybackup of this major it passes every offline check and the restore test
        # fails: recovery never reaches consistency
        assert damaged.get("failed") is True, damaged
        offline = [p for p in damaged["problems"] if not p.startswith("restore test")]
        if pg_major == 15:
            assert damaged["pg_verifybackup"]["command"][1:3] == ["-w", str(broken / "pg_wal")], damaged["pg_verifybackup"]
            assert len(offline) == 1 and "WAL parsing failed for timeline 1" in offline[0], offline
            assert "incorrect resource manager data checksum in record at 0/" in offline[0], offline
            assert damaged["restore_test"]["ran"] is False, damaged["restore_test"]
        else:
            assert offline == [], damaged["problems"]
            assert any("WAL ends before end of online backup" in p for p in damaged["problems"]), damaged["problems"]
            drt = damaged["restore_test"]
            assert drt["ran"] is True and drt["ok"] is False and drt["consistent_at"] is None, drt
            assert drt["redo_start"] == started["start_lsn"], drt
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".pgbackup-restore-test-")]

        if pg_major == 15:  # check mode reads the same, never runs the restore test
            (checked,) = run_verify(ansible_env, testbed, tmp_path, [(dest, args)], "--check")
            assert checked.get("failed") is not True and checked["problems"] == [], checked
            assert checked["restore_test"] == {"ran": False, "reason": "check mode"}
    finally:
        primary.sql(f"DROP TABLE IF EXISTS {canary}, bv_ts_t")
        primary.sql("DROP TABLESPACE IF EXISTS bv_ts")


# The standby-only path (pg_control ends the backup) on both backup APIs; the verifier's versions are test_backup_verify's.
@pytest.mark.majors(13, 18)
def test_backup_verify_standby_only(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """A backup started and stopped on the standby alone (pg_control copied last, standby.signal and primary_conninfo
    in the copy) passes, and its scratch copy recovers from the copy's pg_wal, is promoted and passes amcheck."""
    primary, standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")  # so the restore test checks it at the end point, on the standby
    dest = testbed.scratch_dir(f"bv-standby-copy-{pg_major}")
    state_dir = tmp_path / "keepers"
    state_dir.mkdir(mode=0o700)
    params = {"login_host": standby.host, "login_port": standby.port, "login_user": "postgres", "login_password": standby.password}
    with testbed.load(primary, 30, clients=2):
        primary.sql("CHECKPOINT")  # a checkpoint record the standby can make its restartpoint at
        standby.wait_replayed()
        started = backup_session.start_backup(
            params, backup_id="bvs", label="backup_verify standby", fast=True, max_duration=0, state_dir=str(state_dir), timeout=120
        )
        assert started["server_role"] == "standby"
        source = Source(str(standby.datadir))
        plan = make_plan(source, str(dest), {}, [])
        check_destination(source, plan, str(dest), False)
        execute(source, plan, str(dest), parallel=2, owner="postgres")
        stopped = backup_session.stop_backup(backup_id="bvs", state_dir=str(state_dir), state="stopped", wait_for_archive=True, timeout=120)
    label = base64.b64decode(stopped["backup_label_base64"])
    assert b"BACKUP FROM: standby" in label
    label_placer.place(str(dest), label=label, expected_start_lsn=started["start_lsn"])
    stop_lsn, stop_tli = stopped["stop_lsn"], stopped["stop_timeline"]
    seg_size = read_control_file(str(dest)).xlog_seg_size
    needed = segments_between(parse_lsn(started["start_lsn"]), parse_lsn(stop_lsn), stop_tli, [], seg_size)
    primary.sql("SELECT pg_switch_wal()")  # the primary archives the segment holding the standby's stop point
    deadline = time.monotonic() + 60
    while not all((primary.archive_dir / name).exists() for name in needed) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name in needed:
        shutil.copy2(primary.archive_dir / name, dest / "pg_wal" / name)
        shutil.chown(dest / "pg_wal" / name, "postgres", "postgres")
        os.chmod(dest / "pg_wal" / name, 0o600)
    write_manifest(str(dest), end_lsn=parse_lsn(stop_lsn), end_tli=stop_tli)
    assert (dest / "standby.signal").exists()

    scratch = testbed.scratch_dir(f"bv-standby-restore-{pg_major}")
    args = {
        "stop_lsn": stop_lsn,
        "stop_timeline": stop_tli,
        "pg_bindir": str(primary.pg.bindir),
        "restore_test": True,
        "restore_test_dir": str(scratch),
        "restore_test_port": 6543,
    }
    (good,) = run_verify(ansible_env, testbed, tmp_path, [(dest, args)])
    assert good.get("failed") is not True and good["problems"] == [], (good["problems"], good.get("restore_test"))
    assert good["label"]["backup_from"] == "standby" and good["wal"]["checked"] == needed
    rt = good["restore_test"]
    assert rt["ok"] is True and rt["promoted"] is True and rt["redo_start"] == started["start_lsn"], rt
    # consistency comes at the minimum recovery point of the pg_control copied last, which the stop LSN can only follow
    assert 0 < parse_lsn(rt["consistent_at"]) <= parse_lsn(stop_lsn), rt
    assert rt["amcheck"]["ran"] is True and rt["amcheck"]["ok"] is True, rt["amcheck"]
    assert (dest / "standby.signal").exists() and not (dest / "recovery.signal").exists()  # the copy itself is untouched
    assert rt["scratch_dir"] == str(scratch) and rt["port"] == 6543 and list(scratch.iterdir()) == []  # emptied, kept
