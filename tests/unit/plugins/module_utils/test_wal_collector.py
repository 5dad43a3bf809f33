"""wal_collector: planning across timelines, validation of every fetched segment, .partial handling, waiting, idempotence."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import TimelineHistoryEntry, format_history
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import (
    STAGING_DIR,
    Collector,
    Target,
    check_segment,
    open_target,
    plan_wal,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_source import WalSource

from . import core_vectors
from .walbuilder import MB, PAGE, SYSID, build_segment, full_segment, record, switch_record

T1 = "00000001"


def name(segno: int, tli: int = 1) -> str:
    return f"{tli:08X}00000000{segno:08X}"


HISTORY_2 = format_history([TimelineHistoryEntry(1, 7 * MB + 0x100, "no recovery target specified")])


def old_timeline_7(**kw) -> bytes:
    """Timeline 1's file of segment 7 as the promoted server left it: one record from 7MB+0x28 ending at the switchpoint
    7MB+0x100 (24 + 192 bytes), then stale bytes of a record the old primary was still sending."""
    data = bytearray(build_segment([record(192)], segno=7, **kw))
    data[0x100:0x180] = b"\x77" * 0x80
    return bytes(data)


class Clock:
    """A fake clock for the poll loop: sleep advances it and runs a hook (the archiver at work)."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(seconds, 0.5)
        if self.on_sleep:
            self.on_sleep(self.sleeps)


@pytest.fixture
def world(tmp_path):
    archive = tmp_path / "archive"
    dest = tmp_path / "pg_wal"
    standby = tmp_path / "standby_wal"
    for d in (archive, dest, standby):
        d.mkdir()
    control = SimpleNamespace(system_identifier=SYSID, major_version=15, xlog_seg_size=MB)
    target = Target(str(tmp_path), str(dest), control, os.getuid(), os.getgid(), 0o600)
    return SimpleNamespace(archive=archive, dest=dest, standby=standby, target=target, tmp=tmp_path)


def collector(w, clock=None, **kw) -> Collector:
    clock = clock or Clock()
    partial = kw.pop("partial_from", None)
    return Collector(w.target, WalSource(str(w.archive)), partial_from=WalSource(str(partial)) if partial else None,
                     clock=clock, sleep=clock.sleep, **kw)  # fmt: skip


def refused(c: Collector, *args) -> PgBackupError:
    with pytest.raises(PgBackupError) as err:
        c.run(*args)
    return err.value


def put(directory: Path, file_name: str, data: bytes) -> Path:
    path = directory / file_name
    path.write_bytes(data)
    return path


def tl1_backup(w, first=5, last=8, stop_in_last=0x300):
    """Segments first..last on timeline 1; returns the run arguments with a stop LSN inside the last segment."""
    for segno in range(first, last + 1):
        put(w.archive, name(segno), full_segment(segno=segno))
    return (first * MB + 0x28, 1, last * MB + stop_in_last, 1, MB)


# --- planning -------------------------------------------------------------------------------------


def test_plan_on_one_timeline():
    plan = plan_wal(5 * MB + 0x28, 1, 8 * MB + 0x300, 1, MB, None)
    assert plan.segments == [name(5), name(6), name(7), name(8)]
    assert plan.history_files == [] and plan.required_history == []
    assert plan.last == name(8)


def test_plan_stop_on_a_boundary_needs_nothing_after_it():
    assert plan_wal(5 * MB + 0x28, 1, 8 * MB, 1, MB, None).segments == [name(5), name(6), name(7)]


def test_plan_across_a_timeline_switch_takes_the_switch_segment_from_the_new_timeline():
    plan = plan_wal(5 * MB + 0x28, 1, 9 * MB + 0x10, 2, MB, HISTORY_2)
    assert plan.segments == [name(5), name(6), name(7, 2), name(8, 2), name(9, 2)]
    assert plan.history_files == ["00000002.history"] and plan.required_history == ["00000002.history"]


def test_plan_across_two_switches_lists_every_history_file():
    history = format_history([TimelineHistoryEntry(1, 6 * MB + 0x80), TimelineHistoryEntry(2, 8 * MB + 0x80)])
    plan = plan_wal(5 * MB + 0x28, 1, 9 * MB + 0x10, 3, MB, history)
    assert plan.segments == [name(5), name(6, 2), name(7, 2), name(8, 3), name(9, 3)]
    assert plan.history_files == ["00000002.history", "00000003.history"]
    assert plan.required_history == ["00000003.history"]


def test_plan_refuses_what_does_not_fit():
    with pytest.raises(PgBackupError, match="history of timeline 2 is needed"):
        plan_wal(5 * MB, 1, 9 * MB, 2, MB, None)
    with pytest.raises(PgBackupError, match="not after start"):
        plan_wal(9 * MB, 1, 5 * MB, 1, MB, None)
    with pytest.raises(PgBackupError, match="swapped"):
        plan_wal(5 * MB, 2, 9 * MB, 1, MB, None)
    with pytest.raises(PgBackupError, match="not in the history"):
        plan_wal(8 * MB, 1, 9 * MB, 2, MB, HISTORY_2)  # timeline 1 ended at 0/700100, before the start
    with pytest.raises(PgBackupError, match="segment size"):
        plan_wal(5 * MB, 1, 9 * MB, 1, 3 * MB, None)


# --- collecting -----------------------------------------------------------------------------------


def test_collects_every_segment_atomically_and_is_idempotent(world):
    args = tl1_backup(world)
    plan, out = collector(world).run(*args)
    assert out.segments == plan.segments == [name(5), name(6), name(7), name(8)]
    assert out.bytes == 4 * MB and out.present == []
    for n in plan.segments:
        data = (world.dest / n).read_bytes()
        assert data == (world.archive / n).read_bytes()
        assert stat.S_IMODE((world.dest / n).stat().st_mode) == 0o600
    assert sorted(os.listdir(world.dest)) == plan.segments  # no temporary files, no staging directory left
    plan, again = collector(world).run(*args)
    assert again.segments == [] and again.present == plan.segments and again.bytes == 0


def test_mode_0640_for_a_group_readable_data_directory(world):
    world.target.mode = 0o640
    collector(world).run(*tl1_backup(world, 5, 5))
    assert stat.S_IMODE((world.dest / name(5)).stat().st_mode) == 0o640


def test_check_mode_reports_and_writes_nothing(world):
    args = tl1_backup(world)
    plan, out = collector(world, check_mode=True).run(*args)
    assert out.segments == plan.segments and out.bytes == 4 * MB
    assert os.listdir(world.dest) == []


def test_an_invalid_file_in_place_is_replaced(world):
    args = tl1_backup(world, 5, 6)
    put(world.dest, name(5), full_segment(segno=5, sysid=SYSID + 1))
    put(world.dest, name(6), full_segment(segno=6))
    _plan, out = collector(world).run(*args)
    assert out.segments == [name(5)] and out.present == [name(6)]
    assert (world.dest / name(5)).read_bytes() == (world.archive / name(5)).read_bytes()


def test_collects_across_a_timeline_switch_with_history(world):
    for segno in (5, 6):
        put(world.archive, name(segno), full_segment(segno=segno))
    # the old timeline's file of the switch segment: recovery reads timeline 2's, but WAL-Ranges list timeline 1 up to
    # the switchpoint 7MB+0x100 and pg_verifybackup reads that from 000000010000000000000007
    put(world.archive, name(7) + ".partial", old_timeline_7())
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, name(8, 2), full_segment(segno=8, tli=2))
    put(world.archive, "00000002.history", HISTORY_2.encode())
    plan, out = collector(world).run(5 * MB + 0x28, 1, 8 * MB + 0x10, 2, MB)
    assert plan.segments == [name(5), name(6), name(7, 2), name(8, 2)] and plan.old_timeline == [(name(7), 7 * MB + 0x100)]
    assert out.segments == [name(5), name(6), name(7, 2), name(8, 2), name(7)] and out.old_timeline_segments == [name(7)]
    assert out.history_files == ["00000002.history"]
    assert (world.dest / "00000002.history").read_text() == HISTORY_2
    # placed under the name pg_waldump reads, the WAL up to the switchpoint and zeros after it (the stale bytes gone)
    placed = (world.dest / name(7)).read_bytes()
    assert len(placed) == MB and placed[:0x100] == old_timeline_7()[:0x100] and not any(placed[0x100:])
    assert not (world.dest / (name(7) + ".partial")).exists()
    _plan, again = collector(world).run(5 * MB + 0x28, 1, 8 * MB + 0x10, 2, MB)
    assert again.segments == [] and name(7) in again.present


def test_the_old_timeline_file_is_taken_from_partial_from_when_the_source_lacks_it(world):
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, "00000002.history", HISTORY_2.encode())
    put(world.standby, name(7), old_timeline_7())  # a standby's pg_wal: the file under its own name
    _plan, out = collector(world, partial_from=world.standby).run(7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    assert out.old_timeline_segments == [name(7)] and (world.dest / name(7)).read_bytes()[:0x100] == old_timeline_7()[:0x100]


def test_a_missing_old_timeline_file_is_refused_naming_it_and_where_it_looked(world):
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, "00000002.history", HISTORY_2.encode())
    err = refused(collector(world, timeout=0), 7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    assert err.message.startswith(f"{name(7)}, timeline 1's file of the segment where the timeline switched at 0/700100")
    assert f"Looked for {name(7)} and {name(7)}.partial in {world.archive}" in err.message
    assert f'could not find file "{name(7)}"' in err.message and err.details["problems"][0]["file"] == name(7)
    assert not (world.dest / name(7)).exists()
    err = refused(collector(world, timeout=0, partial_from=world.archive), 7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    assert f"in {world.archive} for 0 s" in err.message  # the same directory named (and searched) once


def test_an_old_timeline_file_without_records_through_the_switchpoint_is_refused(world):
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, "00000002.history", HISTORY_2.encode())
    put(world.archive, name(7) + ".partial", full_segment(segno=7))  # 1000-byte records: none ends at 0x100
    put(world.archive, name(7), old_timeline_7(sysid=SYSID + 1))  # another cluster's
    err = refused(collector(world, timeout=0), 7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    assert f"{name(7)}.partial in {world.archive}: WAL segment {name(7)}.partial does not hold valid records through 0/700100" in err.message
    assert "runs past 0/700100" in err.message
    assert "another cluster" in err.message


def test_the_old_timeline_file_is_waited_for(world):
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, "00000002.history", HISTORY_2.encode())
    clock = Clock(on_sleep=lambda n: n == 2 and put(world.archive, name(7) + ".partial", old_timeline_7()))
    _plan, out = collector(world, clock=clock, timeout=30).run(7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    assert out.old_timeline_segments == [name(7)] and clock.sleeps == 2


def test_a_missing_history_file_of_the_stop_timeline_is_named(world):
    err = refused(collector(world), 5 * MB, 1, 8 * MB + 0x10, 2, MB)
    assert "00000002.history" in err.message and "missing" in str(err.details["problems"])


def test_a_damaged_history_file_is_refused(world):
    put(world.archive, "00000002.history", b"1\tnot an lsn\n")
    assert "syntax error" in refused(collector(world), 5 * MB, 1, 8 * MB + 0x10, 2, MB).message


def test_a_missing_ancestor_history_is_a_warning(world):
    history = format_history([TimelineHistoryEntry(1, 6 * MB + 0x80), TimelineHistoryEntry(2, 6 * MB + 0x100)])
    put(world.archive, "00000003.history", history.encode())
    put(world.archive, name(7, 3), full_segment(segno=7, tli=3))
    _plan, out = collector(world).run(7 * MB + 0x28, 3, 7 * MB + 0x100, 3, MB)
    assert out.history_files == ["00000003.history"] and out.segments == [name(7, 3)]
    assert any("00000002.history" in w for w in out.warnings)


def test_every_missing_and_invalid_segment_is_listed_with_its_reason(world):
    args = tl1_backup(world, 5, 12)
    (world.archive / name(6)).unlink()  # missing in the middle
    put(world.archive, name(7), (world.archive / name(9)).read_bytes())  # segment 9 renamed to 7: page addresses
    put(world.archive, name(8), full_segment(segno=8, sysid=SYSID + 1))  # another cluster
    put(world.archive, name(10), full_segment(segno=10)[: MB // 2])  # short
    put(world.archive, name(11), full_segment(segno=11, magic=0xD106))  # PostgreSQL 13's WAL for a 15 copy
    err = refused(collector(world, timeout=0), *args)
    problems = {p["file"]: p["problem"] for p in err.details["problems"]}
    assert list(problems) == [name(6), name(7), name(8), name(10), name(11)]
    assert problems[name(6)] == "missing"
    assert "recycled or renamed" in problems[name(7)]
    assert "another cluster" in problems[name(8)]
    assert "bytes, expected 1048576" in problems[name(10)]
    assert "magic" in problems[name(11)]
    for n in problems:
        assert n in err.message
    # the good ones were collected; nothing bad was written
    assert sorted(os.listdir(world.dest)) == [name(5), name(9), name(12)]


def test_a_recycled_segment_is_final_in_an_archive_and_does_not_wait(world):
    args = tl1_backup(world, 5, 6)
    put(world.archive, name(6), full_segment(segno=2))
    clock = Clock()
    err = refused(collector(world, clock, timeout=600), *args)
    assert "recycled" in err.message and clock.sleeps == 0
    assert "not waited on" in err.message and "after 600 s" not in err.message, "the message says it did not wait"


def test_a_missing_segment_is_waited_for_and_the_message_says_how_long(world):
    args = tl1_backup(world, 5, 6)
    (world.archive / name(6)).unlink()
    clock = Clock()
    err = refused(collector(world, clock, timeout=5, poll_interval=1), *args)
    assert clock.sleeps >= 5 and "after 5 s" in err.message and "not waited on" not in err.message


def test_in_pg_wal_an_invalid_file_is_fetched_again_until_it_is_written(world):
    args = tl1_backup(world, 5, 6)
    put(world.archive, name(6), full_segment(segno=2))  # a recycled file waiting for its turn

    def write(_n):
        put(world.archive, name(6), full_segment(segno=6))

    clock = Clock(write)
    _plan, out = collector(world, clock, source_type="pg_wal", timeout=10).run(*args)
    assert out.segments == [name(5), name(6)] and clock.sleeps == 1


def test_waits_for_a_segment_being_archived(world):
    args = tl1_backup(world, 5, 7)
    (world.archive / name(7)).unlink()

    def archive(n):
        if n == 3:
            put(world.archive, name(7), full_segment(segno=7))

    clock = Clock(archive)
    _plan, out = collector(world, clock, timeout=30, poll_interval=1).run(*args)
    assert out.segments == [name(5), name(6), name(7)] and clock.sleeps == 3


def test_times_out_naming_the_missing_segment_and_the_archiver(world):
    args = tl1_backup(world, 5, 7)
    (world.archive / name(7)).unlink()
    clock = Clock()
    c = collector(world, clock, timeout=5, poll_interval=1, archiver_status=lambda: "pg_stat_archiver: last failed 000X")
    err = refused(c, *args)
    assert name(7) in err.message and "after 5 s" in err.message and "last failed 000X" in err.message
    assert "switch_wal or partial_from" in err.message
    assert 5 <= clock.now < 7
    assert (world.dest / name(5)).exists() and (world.dest / name(6)).exists()


def test_a_partial_file_never_stands_in_for_a_complete_segment(world):
    args = tl1_backup(world, 5, 6)
    (world.archive / name(6)).unlink()
    put(world.archive, name(6) + ".partial", build_segment([record(100)] * 5, segno=6))
    err = refused(collector(world, timeout=0), *args)
    assert f"only {name(6)}.partial is there" in err.message
    assert not (world.dest / name(6)).exists()


def test_switch_wal_runs_once_when_the_last_segment_is_missing(world):
    args = tl1_backup(world, 5, 6)
    last = (world.archive / name(6)).read_bytes()
    (world.archive / name(6)).unlink()
    calls = []

    def switch():
        calls.append(1)
        put(world.archive, name(6), last)
        return "0/6002000"

    _plan, out = collector(world, timeout=0, switch_wal=switch).run(*args)
    assert calls == [1] and out.wal_switched and out.segments == [name(5), name(6)]


def test_switch_wal_is_not_run_for_a_missing_middle_segment(world):
    args = tl1_backup(world, 5, 7)
    (world.archive / name(6)).unlink()
    calls = []
    err = refused(collector(world, timeout=0, switch_wal=lambda: calls.append(1)), *args)
    assert calls == [] and name(6) in err.message


def test_switch_wal_then_switched_segment_ending_early_is_complete(world):
    # pg_switch_wal() on an idle primary: the last segment ends with a switch record, zeros after.
    put(world.archive, name(5), full_segment(segno=5))
    data = build_segment([record(200), switch_record()], segno=6)
    put(world.archive, name(6), data)
    _plan, out = collector(world).run(5 * MB + 0x28, 1, 6 * MB + 0x100, 1, MB)
    assert out.segments == [name(5), name(6)]


def test_partial_from_takes_the_last_segment_checked_through_the_stop(world):
    args = tl1_backup(world, 5, 6, stop_in_last=3 * PAGE)
    (world.archive / name(6)).unlink()
    current = build_segment([record(1000)] * 40, segno=6)  # being written: valid pages, then zeros
    put(world.standby, name(6), current)
    _plan, out = collector(world, timeout=0, partial_from=world.standby).run(*args)
    assert out.partial_segment == name(6) and out.segments == [name(5), name(6)]
    assert (world.dest / name(6)).read_bytes() == current
    # idempotent: the partial segment in place is good through the stop LSN
    _plan, again = collector(world, timeout=0, partial_from=world.standby).run(*args)
    assert again.segments == [] and again.present == [name(5), name(6)]


def test_partial_from_a_short_partial_file_is_padded(world):
    args = tl1_backup(world, 5, 6, stop_in_last=PAGE)
    (world.archive / name(6)).unlink()
    put(world.standby, name(6) + ".partial", build_segment([record(1000)] * 12, segno=6)[: 4 * PAGE])
    _plan, out = collector(world, timeout=0, partial_from=world.standby).run(*args)
    assert out.partial_segment == name(6)
    data = (world.dest / name(6)).read_bytes()
    assert len(data) == MB and data[4 * PAGE :] == bytes(MB - 4 * PAGE)


def test_partial_from_refuses_a_segment_without_wal_through_the_stop(world):
    args = tl1_backup(world, 5, 6, stop_in_last=200 * 1024)
    (world.archive / name(6)).unlink()
    put(world.standby, name(6), build_segment([record(1000)] * 5, segno=6))  # WAL up to about 5 KB only
    err = refused(collector(world, timeout=0, partial_from=world.standby), *args)
    assert name(6) in err.message and not (world.dest / name(6)).exists()


def test_partial_from_is_only_for_the_last_segment(world):
    args = tl1_backup(world, 5, 7)
    (world.archive / name(6)).unlink()
    put(world.standby, name(6), full_segment(segno=6))
    err = refused(collector(world, timeout=0, partial_from=world.standby), *args)
    assert [p["file"] for p in err.details["problems"]] == [name(6)]


def test_an_incomplete_last_segment_from_pg_wal_is_not_taken_without_partial_from(world):
    args = tl1_backup(world, 5, 6, stop_in_last=PAGE)
    put(world.archive, name(6), build_segment([record(1000)] * 20, segno=6))
    err = refused(collector(world, source_type="pg_wal", timeout=0), *args)
    assert name(6) in err.message and not (world.dest / name(6)).exists()


def test_check_segment_requires_wal_through_the_stop_in_the_last_segment(world):
    plan = plan_wal(5 * MB, 1, 6 * MB + 2 * PAGE + 0x300, 1, MB, None)
    seg = put(world.tmp, "seg", build_segment([record(100)], segno=6))
    assert check_segment(str(seg), name(6), SYSID, plan, 15) is not None  # zeros after, no switch: not complete
    assert check_segment(str(seg), name(6), SYSID, plan, 15, partial=True) is not None  # WAL ends on page 0, the stop is on page 2
    seg3 = put(world.tmp, "seg3", build_segment([record(1000)] * 20, segno=6))
    assert check_segment(str(seg3), name(6), SYSID, plan, 15, partial=True) is None
    assert check_segment(str(seg3), name(6) + ".partial", SYSID, plan, 15, partial=True) is None
    assert "only the last" in check_segment(str(seg), name(5), SYSID, plan, 15, partial=True)


def test_the_staging_directory_is_removed_after_a_failure(world):
    args = tl1_backup(world, 5, 6)
    put(world.archive, name(6), full_segment(segno=6, sysid=1))
    refused(collector(world), *args)
    assert not (world.dest / STAGING_DIR).exists()


# --- the copy -------------------------------------------------------------------------------------


@pytest.fixture
def copy_dir(tmp_path):
    data = tmp_path / "copy"
    (data / "global").mkdir(parents=True)
    (data / "pg_wal").mkdir()
    (data / copy_state.PENDING_CONTROL).write_bytes(core_vectors.read(15, "pg_control_primary.gz"))
    data.chmod(0o700)
    return data


def test_open_target_reads_the_pending_pg_control(copy_dir):
    target = open_target(str(copy_dir))
    assert target.system_identifier == int(core_vectors.expected(15)["system_identifier"])
    assert target.major == 15 and target.control.xlog_seg_size == MB
    assert target.dest == str(copy_dir / "pg_wal") and target.mode == 0o600
    copy_dir.chmod(0o750)
    assert open_target(str(copy_dir)).mode == 0o640


def test_open_target_refuses_an_incomplete_copy(copy_dir):
    copy_state.write_marker(str(copy_dir), "copying")
    with pytest.raises(PgBackupError, match="unfinished copy"):
        open_target(str(copy_dir))


def test_open_target_refuses_a_live_postmaster(copy_dir, tmp_path):
    # A pid file naming no live process, or a process that is not postgres, is a leftover: accepted.
    (copy_dir / "postmaster.pid").write_text(f"999999999\n{copy_dir}\n")
    open_target(str(copy_dir))
    (copy_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{copy_dir}\n")
    open_target(str(copy_dir))
    # A live process named postgres working in the copy is a running server.
    fake = tmp_path / "postgres"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "30"], cwd=copy_dir)
    try:
        (copy_dir / "postmaster.pid").write_text(f"{proc.pid}\n{copy_dir}\n")
        with pytest.raises(PgBackupError, match="running cluster"):
            open_target(str(copy_dir))
    finally:
        proc.kill()
        proc.wait()


def test_open_target_refuses_a_directory_without_pg_control(tmp_path):
    (tmp_path / "pg_wal").mkdir()
    with pytest.raises(PgBackupError, match="neither global/pg_control"):
        open_target(str(tmp_path))
    with pytest.raises(PgBackupError, match="does not exist"):
        open_target(str(tmp_path / "nope"))


# --- real WAL of every major ----------------------------------------------------------------------


@pytest.mark.parametrize("major", core_vectors.MAJORS, ids=[f"pg{m}" for m in core_vectors.MAJORS])
def test_real_segments_of_every_major(major, tmp_path):
    expected = core_vectors.expected(major)
    copy = tmp_path / "copy"
    (copy / "global").mkdir(parents=True)
    (copy / "pg_wal").mkdir()
    (copy / copy_state.PENDING_CONTROL).write_bytes(core_vectors.read(major, "pg_control_primary.gz"))
    archive = tmp_path / "archive"
    archive.mkdir()
    segs = expected["segments"]  # a complete one, the next ending with a switch, timeline 2's first, the old timeline's .partial
    for seg in segs[:4]:
        put(archive, seg["name"], core_vectors.read(major, seg["file"]))
    history = expected["history"]
    assert history["name"] == "00000002.history"
    put(archive, history["name"], history["text"].encode())
    target = open_target(str(copy))
    first = int(segs[0]["name"][16:], 16)
    stop_b = parse_lsn(segs[1]["switch_end_lsn"])
    _plan, out = Collector(target, WalSource(str(archive))).run(first * MB + 0x28, 1, stop_b, 1, MB)
    assert out.segments == [segs[0]["name"], segs[1]["name"]]
    # timeline 2's first segment holds timeline 1's WAL up to the switchpoint: a backup started before it
    switch_seg = int(segs[2]["name"][16:], 16)
    stop_d = parse_lsn(segs[2]["switch_end_lsn"])
    _plan, out = Collector(target, WalSource(str(archive))).run(switch_seg * MB + 0x28, 1, stop_d, 2, MB)
    old = segs[3]["name"][: -len(".partial")]  # timeline 1's .partial, archived at the promotion, placed as the segment
    assert out.segments == [segs[2]["name"], old] and out.history_files == ["00000002.history"] and out.old_timeline_segments == [old]
    keep = parse_lsn(segs[3]["through_lsn"]) % MB
    placed = (copy / "pg_wal" / old).read_bytes()
    assert placed[:keep] == core_vectors.read(major, segs[3]["file"])[:keep] and not any(placed[keep:]) and len(placed) == MB
    # a real segment renamed to a later name; the old timeline's .partial does not stand in for its segment
    renamed = name(first + 2)
    shutil.copy(archive / segs[0]["name"], archive / renamed)
    err = refused(Collector(target, WalSource(str(archive))), (first + 2) * MB + 0x28, 1, switch_seg * MB + 0x80, 1, MB)
    problems = {p["file"]: p["problem"] for p in err.details["problems"]}
    assert "recycled or renamed" in problems[renamed]
    assert f"{name(switch_seg)}.partial is there" in problems[name(switch_seg)]


def tl1_backup_args():
    return (5 * MB + 0x28, 1, 6 * MB + 0x300, 1, MB)


def test_a_missing_source_directory_is_named(world):
    shutil.rmtree(world.archive)
    assert "does not exist" in refused(collector(world), *tl1_backup_args()).message


def test_check_mode_with_partial_from_writes_nothing(world):
    args = tl1_backup(world, 5, 6, stop_in_last=PAGE)
    (world.archive / name(6)).unlink()
    put(world.standby, name(6), build_segment([record(1000)] * 20, segno=6))
    _plan, out = collector(world, timeout=0, partial_from=world.standby, check_mode=True).run(*args)
    assert out.partial_segment == name(6) and out.segments == [name(5), name(6)]
    assert os.listdir(world.dest) == []


def test_history_in_place_is_not_written_again(world):
    put(world.archive, "00000002.history", HISTORY_2.encode())
    put(world.archive, name(7, 2), full_segment(segno=7, tli=2, page_tlis={0: 1}))
    put(world.archive, name(7) + ".partial", old_timeline_7())
    args = (7 * MB + 0x28, 1, 7 * MB + 0x300, 2, MB)
    _plan, out = collector(world).run(*args)
    assert out.history_files == ["00000002.history"] and out.segments == [name(7, 2), name(7)]
    _plan, again = collector(world).run(*args)
    assert again.history_files == [] and again.segments == [] and again.present == [name(7, 2), name(7)]


def test_the_current_segment_of_pg_wal_is_taken_with_partial_from_the_same_directory(world):
    args = tl1_backup(world, 5, 6, stop_in_last=PAGE)
    put(world.archive, name(6), build_segment([record(1000)] * 20, segno=6))  # still being written
    _plan, out = collector(world, source_type="pg_wal", timeout=0, partial_from=world.archive).run(*args)
    assert out.partial_segment == name(6)


def test_a_segment_with_a_timeline_above_its_name_is_refused(world):
    args = tl1_backup(world, 5, 6)
    put(world.archive, name(6), full_segment(segno=6, page_tlis={3: 2}))
    assert "above the file name's timeline" in refused(collector(world), *args).message


def test_what_a_killed_run_left_is_removed(world):
    args = tl1_backup(world, 5, 5)
    (world.dest / STAGING_DIR).mkdir()
    put(world.dest / STAGING_DIR, name(5), b"half")
    put(world.dest, name(5) + ".pgbackup-tmp", b"half")
    _plan, out = collector(world).run(*args)
    assert out.segments == [name(5)] and sorted(os.listdir(world.dest)) == [name(5)]


def test_the_archive_server_connects_only_when_asked_and_says_why_it_could_not():
    from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import ArchiveServer

    tries = []

    def refuse(**kwargs):
        tries.append(kwargs)
        raise RuntimeError('connection to server at "db1", port 5433 failed: Connection refused')

    server = ArchiveServer({"login_host": "db1", "login_port": 5433, "login_unix_socket": None}, application_name="t", connect_function=refuse)
    assert tries == [] and server.queries == []
    status = server.archiver_status()
    assert status.startswith("pg_stat_archiver on db1:5433 could not be read: ") and "Connection refused" in status
    with pytest.raises(PgBackupError) as caught:
        server.switch_wal()
    assert caught.value.details["connect_failed"] is True and len(tries) == 2
    server.close()
