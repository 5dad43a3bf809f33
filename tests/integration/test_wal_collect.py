"""wal_collect against real PostgreSQL 13-18 through ansible-playbook: a low-level backup's WAL taken from the primary's
archive (and from its pg_wal) while pgbench writes; a renamed, a foreign and a missing segment named; an idle primary's
last segment fetched with switch_wal and from the standby's pg_wal with partial_from."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state

from .harness.pgbins import selected_majors
from .support.playbooks import run_playbook

pytestmark = pytest.mark.integration

SEG = 16 << 20  # the test bed's clusters use the default segment size
PAGE = 8192


def _segno(file_name: str) -> int:
    return int(file_name[8:16], 16) * 0x100 + int(file_name[16:24], 16)


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


def _names(first: str, last: str) -> list:
    """Every file name from ``first`` to ``last`` on ``first``'s timeline (16 MB segments: 256 per log file)."""
    tli = first[:8]
    return [f"{tli}{n // 0x100:08X}{n % 0x100:08X}" for n in range(_segno(first), _segno(last) + 1)]


def _moved(segment: bytes, base: int) -> bytes:
    """``segment`` with the page address (xlp_pageaddr, offset 8) of every written page set as if it started at ``base``."""
    data = bytearray(segment)
    for offset in range(0, len(data), PAGE):
        if any(data[offset : offset + PAGE]):
            struct.pack_into("<Q", data, offset + 8, base + offset)
    return bytes(data)


def _copy(testbed, primary, tag: str) -> Path:
    """A stand-in for datadir_copy's result: the primary's pg_control under the pending name, an empty pg_wal, 0700."""
    data = testbed.scratch_dir(f"wc-{tag}-{uuid.uuid4().hex[:6]}")
    for sub in ("global", "pg_wal"):
        (data / sub).mkdir()
        shutil.chown(data / sub, "postgres", "postgres")
    shutil.copyfile(primary.datadir / "global" / "pg_control", data / copy_state.PENDING_CONTROL)
    data.chmod(0o700)
    return data


def _run(testbed, ansible_env, tmp_path: Path, runs: list) -> dict:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / f"wal-collect-{uuid.uuid4().hex[:8]}.json"
    run_playbook(ansible_env, inventory, "wal_collect.yml", {"runs": runs, "result_file": str(result_file)}, "--limit", testbed.hosts[0].name)
    return {r["item"]["name"]: r for r in json.loads(result_file.read_text())}


def _ok(result: dict) -> dict:
    assert result.get("failed") is not True, result.get("msg")
    return result


def _failed(result: dict) -> dict:
    assert result.get("failed") is True, result
    return {p["file"]: p["problem"] for p in result["problems"]}


def _wal_files(path: Path) -> list:
    return sorted(p.name for p in path.iterdir())


def _ensure_pgbench(primary) -> None:
    if not primary.sql("SELECT to_regclass('public.pgbench_accounts') IS NOT NULL")[0][0]:
        primary.pgbench_init()


def _low_level_backup(primary, testbed, major: int) -> tuple:
    """start -> WAL switches -> stop with pgbench writing; returns start LSN, stop LSN and their file names (from the server)."""
    _ensure_pgbench(primary)
    conn = psycopg2.connect(**primary.conninfo())
    conn.autocommit = True
    try:
        with testbed.load(primary, 20, clients=2), conn.cursor() as cur:
            time.sleep(0.5)
            start = "pg_backup_start('wal_collect test', true)" if major >= 15 else "pg_start_backup('wal_collect test', true, false)"
            cur.execute(f"SELECT {start}::text")
            (start_lsn,) = cur.fetchone()
            for _unused in range(4):
                time.sleep(0.2)
                primary.sql("SELECT pg_switch_wal()")
            if major >= 15:
                cur.execute("SELECT lsn::text FROM pg_backup_stop(true)")
            else:
                cur.execute("SELECT lsn::text FROM pg_stop_backup(false, true)")
            (stop_lsn,) = cur.fetchone()
            # the server's own names: the segment of the start, the one holding the byte before the stop
            cur.execute("SELECT pg_walfile_name(%s::pg_lsn), pg_walfile_name(%s::pg_lsn)", (start_lsn, stop_lsn))
            first, last = cur.fetchone()
    finally:
        conn.close()
    # pg_walfile_name uses the previous segment for a start exactly on a boundary; the start is never there
    assert _lsn(start_lsn) % SEG != 0
    return start_lsn, stop_lsn, first, last


def _backup_runs(primary, testbed, pg_major) -> tuple:
    """A backup under pgbench, a faulty archive made of its segments; the runs and what the checks need."""
    start_lsn, stop_lsn, first, last = _low_level_backup(primary, testbed, pg_major)
    expected = _names(first, last)
    assert len(expected) >= 5, expected  # four switches inside the backup
    tli = int(first[:8], 16)
    archive = primary.archive_dir
    copies = {t: _copy(testbed, primary, t) for t in ("good", "check", "pgwal", "faulty")}
    # A faulty archive: the backup's segments, one missing, one a later real segment under an earlier name, one of another cluster.
    bad_archive = testbed.scratch_dir(f"wc-bad-archive-{uuid.uuid4().hex[:6]}")
    for n in expected:
        shutil.copyfile(archive / n, bad_archive / n)
    missing, renamed, foreign = expected[1], expected[2], expected[3]
    (bad_archive / missing).unlink()
    shutil.copyfile(archive / expected[-1], bad_archive / renamed)
    other = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-wc-other-{uuid.uuid4().hex[:4]}")
    other.initdb()
    # initdb's first segment, its page addresses moved to the foreign slot: WAL of another cluster at the right place
    (bad_archive / foreign).write_bytes(_moved((other.datadir / "pg_wal" / "000000010000000000000001").read_bytes(), _segno(foreign) * SEG))

    common = {"start_lsn": start_lsn, "stop_lsn": stop_lsn, "stop_timeline": tli, "start_timeline": tli, "timeout": 0}
    login = {"login_host": primary.host, "login_port": primary.port}
    runs = [
        {"name": "check", "data_dir": str(copies["check"]), "source_path": str(archive), "check_mode": True, **common},
        {"name": "collect", "data_dir": str(copies["good"]), "source_path": str(archive), "wal_segment_size": SEG, **common},
        {"name": "again", "data_dir": str(copies["good"]), "source_path": str(archive), **common},
        {"name": "pg_wal", "data_dir": str(copies["pgwal"]), "source_path": str(primary.datadir / "pg_wal"), "source_type": "pg_wal", **common},
        {"name": "faults", "data_dir": str(copies["faulty"]), "source_path": str(bad_archive), **common, **login, "timeout": 30},
        {"name": "wrong size", "data_dir": str(copies["faulty"]), "source_path": str(archive), **common, "wal_segment_size": SEG * 2},
    ]
    return runs, {"expected": expected, "copies": copies, "faults": (missing, renamed, foreign)}


def _check_backup_runs(results: dict, archive: Path, expected: list, copies: dict, faults: tuple) -> None:
    checked = _ok(results["check"])
    assert checked["segments"] == expected and checked["needed"] == expected and checked["bytes"] == len(expected) * SEG
    assert _wal_files(copies["check"] / "pg_wal") == []

    good = copies["good"]
    collected = _ok(results["collect"])
    assert collected["changed"] is True and collected["segments"] == expected and collected["present"] == []
    assert collected["history_files"] == [] and collected["partial_segment"] is None
    assert _wal_files(good / "pg_wal") == expected  # nothing else: no temporary name, no staging directory
    for n in expected:
        path = good / "pg_wal" / n
        assert path.read_bytes() == (archive / n).read_bytes(), n
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and os.stat(good).st_uid == st.st_uid

    again = _ok(results["again"])
    assert again["changed"] is False and again["segments"] == [] and again["present"] == expected

    assert _ok(results["pg_wal"])["segments"] == expected
    assert _wal_files(copies["pgwal"] / "pg_wal") == expected

    missing, renamed, foreign = faults
    failed = results["faults"]
    problems = _failed(failed)
    assert list(problems) == [missing, renamed, foreign], failed["msg"]
    assert problems[missing] == "missing"
    assert "recycled or renamed" in problems[renamed]
    assert "another cluster" in problems[foreign]
    for n in (missing, renamed, foreign):
        assert n in failed["msg"]
    assert "pg_stat_archiver" in failed["msg"]
    # An invalid full-size file in an archive does not change: refused at once, and said so (not "after 30 s").
    assert "not waited on" in failed["msg"] and "after 30 s" not in failed["msg"]
    assert sorted(set(expected) - set(faults)) == _wal_files(copies["faulty"] / "pg_wal")

    assert "differs from the copy's pg_control" in results["wrong size"]["msg"]


def _idle_runs(primary, standby, testbed) -> tuple:
    """LSNs on the idle primary whose last segment is not complete (nor archived); the runs that must still collect it."""
    primary.sql("CREATE TABLE IF NOT EXISTS wc_idle (n int)")
    # Autovacuum after the backup's pgbench load, right after a checkpoint, writes full-page images: on 14 in CI it
    # filled and archived the "idle" segment during the playbook (the no-help run then found it). A VACUUM now leaves
    # autovacuum nothing to do, and the runs that need the segment not archived read a frozen archive (below).
    primary.sql("VACUUM ANALYZE")
    # A fresh segment: a stop LSN near a segment's end (seen on 16: 0/20FE37E0, 115 kB left) is filled and archived by
    # the server's own WAL (autovacuum, standby snapshots) before the switch_wal run, which then has nothing to switch.
    primary.sql("CHECKPOINT")
    primary.sql("SELECT pg_switch_wal()")
    (start_lsn,) = primary.sql("INSERT INTO wc_idle VALUES (1) RETURNING pg_current_wal_lsn()::text")[0]
    primary.sql("INSERT INTO wc_idle VALUES (2)")
    stop_lsn = primary.current_lsn()
    (last,) = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (stop_lsn,))[0]
    tli = int(last[:8], 16)
    standby.wait_replayed(stop_lsn)
    assert not (primary.archive_dir / last).exists()  # the primary is idle: its current segment is not archived

    copies = {t: _copy(testbed, primary, t) for t in ("hang", "partial", "switch")}
    # The archive as it is now, without the last segment (the start and the stop are both in it, so it needs nothing
    # else): what the runs without a switch must not find there, whatever the server archives during the playbook.
    frozen = testbed.scratch_dir(f"wc-frozen-archive-{uuid.uuid4().hex[:6]}")
    common = {"start_lsn": start_lsn, "stop_lsn": stop_lsn, "stop_timeline": tli, "poll_interval": 0.2}
    login = {"login_host": primary.host, "login_port": primary.port}
    runs = [
        {"name": "no help", "data_dir": str(copies["hang"]), **common, "source_path": str(frozen), "timeout": 1},
        {
            "name": "partial_from",
            "data_dir": str(copies["partial"]),
            **common,
            "source_path": str(frozen),
            "timeout": 10,
            "partial_from": str(standby.datadir / "pg_wal"),
        },
        # last: it switches, and the switched segment reaches the live archive
        {
            "name": "switch_wal",
            "data_dir": str(copies["switch"]),
            **common,
            "source_path": str(primary.archive_dir),
            "timeout": 30,
            "switch_wal": True,
            **login,
        },
    ]
    return runs, {"last": last, "stop_lsn": stop_lsn, "copies": copies}


def _check_idle_runs(results: dict, archive: Path, last: str, stop_lsn: str, copies: dict) -> None:
    hung = results["no help"]
    assert list(_failed(hung)) == [last] and "use switch_wal or partial_from" in hung["msg"]
    assert "after 1 s" in hung["msg"] and hung["seconds"] >= 1, "it waited its timeout (1 s) before it said so"
    assert _wal_files(copies["hang"] / "pg_wal") == []

    from_standby = _ok(results["partial_from"])
    assert from_standby["partial_segment"] == last and from_standby["segments"][-1] == last
    assert from_standby["wal_switched"] is False
    data = (copies["partial"] / "pg_wal" / last).read_bytes()
    assert len(data) == SEG

    by_switch = _ok(results["switch_wal"])
    assert by_switch["wal_switched"] is True and by_switch["partial_segment"] is None
    assert by_switch["segments"][-1] == last and "pg_switch_wal" in " ".join(by_switch["queries"])
    archived = (archive / last).read_bytes()
    assert (copies["switch"] / "pg_wal" / last).read_bytes() == archived
    # the standby's copy and the archived (switched) one hold the same WAL up to the stop LSN
    stop_offset = _lsn(stop_lsn) % SEG
    assert data[:stop_offset] == archived[:stop_offset]


def test_backup_wal_faults_and_idle_primary(primary_standby, testbed, ansible_env, tmp_path, pg_major):
    """One ansible-playbook run per version: the backup's WAL (check mode, collect, again, from pg_wal), the faults
    named, then on the idle primary the last segment without help (fails, names it), with partial_from, with switch_wal."""
    primary, standby = primary_standby
    backup_runs, backup = _backup_runs(primary, testbed, pg_major)
    idle_runs, idle = _idle_runs(primary, standby, testbed)
    results = _run(testbed, ansible_env, tmp_path, backup_runs + idle_runs)
    _check_backup_runs(results, primary.archive_dir, **backup)
    _check_idle_runs(results, primary.archive_dir, **idle)


@pytest.mark.netns
def test_remote_archive_over_ssh(netns_testbed, ansible_env, tmp_path):
    """Run on db2, the module lists and pulls db1's archive over ssh as postgres (a path with a space and a quote)."""
    major = 15 if 15 in selected_majors() else selected_majors()[-1]
    bed = netns_testbed
    db1, db2 = bed.host("db1"), bed.host("db2")
    primary = bed.new_primary(major, host=db1, name=f"pg{major}-wc-remote")
    primary.sql("CREATE TABLE wc_remote AS SELECT g FROM generate_series(1, 1000) g")
    (start_lsn,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    for i in range(3):
        primary.sql("INSERT INTO wc_remote SELECT g FROM generate_series(1, %s) g", (1000 + i,))
        primary.sql("SELECT pg_switch_wal()")
    primary.sql("INSERT INTO wc_remote VALUES (0)")
    (stop_lsn, first, last) = primary.sql(
        "SELECT pg_current_wal_lsn()::text, pg_walfile_name(%s::pg_lsn), pg_walfile_name(pg_current_wal_lsn())", (start_lsn,)
    )[0]
    primary.sql("SELECT pg_switch_wal()")
    expected = _names(first, last)
    deadline = time.monotonic() + 30
    while not all((primary.archive_dir / n).exists() for n in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    odd = bed.scratch_dir("wc remote 'archive'")
    for n in expected:
        shutil.copyfile(primary.archive_dir / n, odd / n)
    bad = bed.scratch_dir("wc remote bad")
    for n in expected[:-1]:
        shutil.copyfile(primary.archive_dir / n, bad / n)
    shutil.copyfile(primary.archive_dir / expected[0], bad / expected[1])  # renamed to a later name
    check, good, faulty = (_copy(bed, primary, t) for t in ("rcheck", "rgood", "rfaulty"))
    remote = {"source_host": db1.address, "source_user": "postgres", "start_lsn": start_lsn, "stop_lsn": stop_lsn, "stop_timeline": 1, "timeout": 0}
    runs = [
        {"name": "check", "data_dir": str(check), "source_path": str(odd), "check_mode": True, **remote},
        {"name": "collect", "data_dir": str(good), "source_path": str(odd), **remote},
        {"name": "faults", "data_dir": str(faulty), "source_path": str(bad), **remote},
    ]
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / "remote.json"
    run_playbook(ansible_env, inventory, "wal_collect.yml", {"runs": runs, "result_file": str(result_file)}, "--limit", db2.name)
    results = {r["item"]["name"]: r for r in json.loads(result_file.read_text())}
    assert _ok(results["check"])["segments"] == expected and _wal_files(check / "pg_wal") == []
    assert _ok(results["collect"])["segments"] == expected
    for n in expected:
        assert (good / "pg_wal" / n).read_bytes() == (primary.archive_dir / n).read_bytes()
    assert _wal_files(good / "pg_wal") == expected
    problems = _failed(results["faults"])
    assert list(problems) == [expected[1], expected[-1]]
    assert "recycled or renamed" in problems[expected[1]] and problems[expected[-1]] == "missing"


@pytest.mark.netns
def test_across_a_promotion_with_its_history_over_ssh(netns_testbed, ansible_env, tmp_path):
    """A backup started on timeline 1 and stopped on the promoted standby's timeline 2: the segments before the switch
    segment come from timeline 1, the switch segment and after from timeline 2, and 00000002.history is collected."""
    major = 15 if 15 in selected_majors() else selected_majors()[-1]
    bed = netns_testbed
    db1, db2 = bed.host("db1"), bed.host("db2")
    primary = bed.new_primary(major, host=db1, name=f"pg{major}-wc-tl1")
    standby = bed.new_standby(primary, host=db2, name=f"pg{major}-wc-tl2")
    primary.sql("CREATE TABLE wc_tl AS SELECT g FROM generate_series(1, 1000) g")
    (start_lsn, first) = primary.sql("SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())")[0]
    for _unused in range(2):
        primary.sql("INSERT INTO wc_tl SELECT g FROM generate_series(1, 1000) g")
        primary.sql("SELECT pg_switch_wal()")
    primary.sql("INSERT INTO wc_tl VALUES (0)")
    standby.wait_replayed(primary.current_lsn())
    standby.sql("SELECT pg_promote(true, 60)")
    for _unused in range(2):
        standby.sql("INSERT INTO wc_tl SELECT g FROM generate_series(1, 1000) g")
        standby.sql("SELECT pg_switch_wal()")
    standby.sql("INSERT INTO wc_tl VALUES (1)")
    (stop_lsn, last) = standby.sql("SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())")[0]
    standby.sql("SELECT pg_switch_wal()")
    assert last.startswith("00000002")
    deadline = time.monotonic() + 30
    while not (standby.archive_dir / last).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    history = (standby.archive_dir / "00000002.history").read_text()
    switchpoint = _lsn(history.split()[1])  # "1<TAB>0/XXXXXXX<TAB>reason": timeline 1 ends there
    # The expected names, independently: timeline 2's from the segment holding the switchpoint on, timeline 1's before.
    expected = [f"{2 if n >= switchpoint // SEG else 1:08X}{n // 0x100:08X}{n % 0x100:08X}" for n in range(_segno(first), _segno(last) + 1)]
    assert expected[0].startswith("00000001") and expected[-1] == last
    shared = bed.scratch_dir("wc shared archive")  # what a shared archive of both servers holds
    for directory in (primary.archive_dir, standby.archive_dir):
        for path in directory.iterdir():
            if not (shared / path.name).exists():
                shutil.copyfile(path, shared / path.name)
    no_history = bed.scratch_dir("wc archive without history")
    for path in shared.iterdir():
        if path.name != "00000002.history":
            shutil.copyfile(path, no_history / path.name)
    good, refused_copy = _copy(bed, primary, "tl"), _copy(bed, primary, "tl-nohist")
    common = {"source_host": db1.address, "source_user": "postgres", "start_lsn": start_lsn, "start_timeline": 1, "stop_lsn": stop_lsn,
              "stop_timeline": 2, "timeout": 0}  # fmt: skip
    runs = [
        {"name": "across", "data_dir": str(good), "source_path": str(shared), **common},
        {"name": "no history", "data_dir": str(refused_copy), "source_path": str(no_history), **common},
    ]
    inventory = bed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / "timeline.json"
    run_playbook(ansible_env, inventory, "wal_collect.yml", {"runs": runs, "result_file": str(result_file)}, "--limit", db2.name)
    results = {r["item"]["name"]: r for r in json.loads(result_file.read_text())}
    across = _ok(results["across"])
    # and timeline 1's file of the switch segment, for pg_verifybackup (the manifest's timeline 1 range ends inside it):
    # from the .partial the promoted standby archived, the WAL up to the switchpoint, zeros after
    keep = switchpoint % SEG
    old = [f"00000001{(switchpoint // SEG) // 0x100:08X}{(switchpoint // SEG) % 0x100:08X}"] if keep else []
    assert across["segments"] == [*expected, *old] and across["old_timeline_segments"] == old
    assert across["history_files"] == ["00000002.history"]
    assert _wal_files(good / "pg_wal") == sorted([*expected, *old, "00000002.history"])
    for n in [*expected, "00000002.history"]:
        assert (good / "pg_wal" / n).read_bytes() == (shared / n).read_bytes(), n
    for n in old:
        placed = (good / "pg_wal" / n).read_bytes()
        assert placed[:keep] == (shared / f"{n}.partial").read_bytes()[:keep] and len(placed) == SEG and not any(placed[keep:])
    assert list(_failed(results["no history"])) == ["00000002.history"]
