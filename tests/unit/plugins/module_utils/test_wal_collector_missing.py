"""wal_collector says why a segment is missing, as is true for its source (issue 12, item 5): from a server's pg_wal, one
older than the oldest segment there was removed or recycled (keep a slot or collect from the archive) and one after the
newest is not received yet, with no word of the archive; from an archive, it was not archived (yet), with
pg_stat_archiver's figures and the host:port whose archive_command to check. The standby_backup role's "Fail with the
cause" turns the module's option names into its own variables: rendered here with its real template."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import Collector, Target, open_target
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_source import WalSource

from . import core_vectors
from .walbuilder import MB, SYSID, full_segment

ROOT = Path(__file__).resolve().parents[4]
FAILED = {"archived_count": 41, "last_archived_wal": "000000010000000000000004", "failed_count": 3,
          "last_failed_wal": "000000010000000000000005", "last_failed_time": "2026-12-02 10:00:00+00", "server": "db1:5432"}  # fmt: skip


def name(segno: int, tli: int = 1) -> str:
    return f"{tli:08X}00000000{segno:08X}"


@pytest.fixture
def world(tmp_path):
    return SimpleNamespace(tmp=tmp_path, runs=0)


def failure(w, segnos, source_type: str, archiver=None, args=(5 * MB + 0x28, 1, 8 * MB + 0x300, 1, MB), other=None) -> str:
    """The message of a run over a source holding ``segnos`` (a fresh source and copy each time; ``w.source`` is the last)."""
    w.runs += 1
    w.source, dest = w.tmp / f"source{w.runs}", w.tmp / f"pg_wal{w.runs}"
    w.source.mkdir()
    dest.mkdir()
    for segno in segnos:
        (w.source / name(segno)).write_bytes(full_segment(segno=segno))
    for file_name, data in (other or {}).items():
        (w.source / file_name).write_bytes(data)
    target = Target(str(w.tmp), str(dest), SimpleNamespace(system_identifier=SYSID, major_version=15, xlog_seg_size=MB), os.getuid(), os.getgid(), 0o600)
    collector = Collector(target, WalSource(str(w.source)), source_type=source_type, archiver_status=archiver, sleep=lambda _s: None)
    with pytest.raises(PgBackupError) as err:
        collector.run(*args)
    return err.value.message


def test_pg_wal_a_segment_older_than_the_oldest_there_was_recycled(world):
    message = failure(world, [7, 8, 9, 10], "pg_wal", archiver=lambda: FAILED)  # 5 and 6 are gone, 9 and 10 recycled ahead
    assert f"{name(5)} and 1 more up to {name(6)} are older than the oldest segment in {world.source} ({name(7)})" in message
    assert "the server removed or recycled them at a checkpoint or restartpoint before they were collected" in message
    assert "replication slot (wal_retain)" in message and "(source_type: archive)" in message
    # nothing about the archive's health: the archiver's figures are of another place
    assert "archive_command" not in message and "pg_stat_archiver" not in message and "not archived" not in message


def test_pg_wal_a_segment_after_the_newest_there_is_not_received_yet(world):
    message = failure(world, [5, 6], "pg_wal")
    assert f"{name(7)} and 1 more up to {name(8)} are after the newest segment in {world.source} ({name(6)})" in message
    assert "has not received or written that WAL yet" in message and "recycled" not in message


def test_pg_wal_one_segment_gone_reads_in_the_singular(world):
    message = failure(world, [6, 7, 8], "pg_wal")
    assert f"{name(5)} is older than the oldest segment" in message and "recycled it at" in message and "before it was collected" in message


def test_archive_missing_with_archiver_failures_names_the_server_to_check(world):
    message = failure(world, [5, 6, 7], "archive", archiver=lambda: FAILED)
    assert f"{name(8)} was not archived into {world.source} (yet): pg_stat_archiver on db1:5432: 41 archived" in message
    assert f"3 failed, the last {name(5)} at 2026-12-02 10:00:00+00" in message
    assert "check archive_command on db1:5432 (its error is in that server's log)" in message
    assert "recycled" not in message and "wal_retain" not in message


def test_the_role_names_its_timeout_for_a_slow_archiver(world):
    quiet = dict(FAILED, failed_count=0, last_failed_wal=None)
    cause = _role_cause(failure(world, [5, 6, 7], "archive", archiver=lambda: quiet), use_slot=True)
    assert "or raise standby_backup_wal_timeout if it is only slow" in cause and "raise timeout" not in cause


def test_archive_missing_though_the_server_archived_past_it_points_at_the_archive_directory(world):
    archived_past = dict(FAILED, failed_count=0, last_failed_wal=None, last_archived_wal=name(9))
    message = failure(world, [5, 6, 7], "archive", archiver=lambda: archived_past)
    assert f"db1:5432 archived past {name(8)} without a failure, so its archive_command does not write into {world.source}" in message


@pytest.mark.parametrize(
    ("last", "past"),
    [(name(8), True), (name(9), True), (name(7), False), (f"{name(9)}.00000028.backup", True), (f"{name(8)}.00000028.backup", False),
     (f"{name(9)}.partial", False), ("00000002.history", False), (None, False)],
)  # fmt: skip
def test_archived_past_reads_the_last_archived_file_name(world, last, past):
    # <seg>.backup is written (and may be archived) before <seg> is complete: only a later segment's says <seg> was archived
    status = dict(FAILED, failed_count=0, last_failed_wal=None, last_archived_wal=last)
    message = failure(world, [5, 6, 7], "archive", archiver=lambda: status)
    assert ("archived past" in message) is past, message
    assert "db1:5432 reports no failure: check that archive_command on db1:5432 archives into" in message or past, message


def test_archive_missing_without_a_connection_or_with_unreadable_figures(world):
    message = failure(world, [5, 6, 7], "archive")
    assert "not archived into" in message and "check archive_command and pg_stat_archiver on the server that archives there" in message
    message = failure(world, [5, 6, 7], "archive", archiver=lambda: "pg_stat_archiver on db1:5432 could not be read: permission denied")
    assert "(yet): pg_stat_archiver on db1:5432 could not be read: permission denied" in message


def test_an_invalid_segment_gets_no_missing_explanation(world):
    message = failure(world, [5, 6, 7], "archive", archiver=lambda: FAILED, other={name(8): full_segment(segno=8, sysid=SYSID + 1)})
    assert "another cluster" in message and "not archived" not in message and "pg_stat_archiver" not in message


# --- real WAL of every major --------------------------------------------------------------------


@pytest.mark.parametrize("major", core_vectors.MAJORS, ids=[f"pg{m}" for m in core_vectors.MAJORS])
@pytest.mark.parametrize("source_type", ["pg_wal", "archive"])
def test_real_segments_missing_the_first_one(major, source_type, tmp_path):
    """A real backup's first segment is gone and the second is there: recycled from a pg_wal, not archived in an archive."""
    copy = tmp_path / "copy"
    (copy / "global").mkdir(parents=True)
    (copy / "pg_wal").mkdir()
    (copy / copy_state.PENDING_CONTROL).write_bytes(core_vectors.read(major, "pg_control_primary.gz"))
    source = tmp_path / "source"
    source.mkdir()
    first, second = core_vectors.expected(major)["segments"][:2]
    (source / second["name"]).write_bytes(core_vectors.read(major, second["file"]))
    start = int(first["name"][16:], 16) * MB + 0x28
    collector = Collector(open_target(str(copy)), WalSource(str(source)), source_type=source_type, archiver_status=lambda: FAILED)
    with pytest.raises(PgBackupError) as err:
        collector.run(start, 1, parse_lsn(second["switch_end_lsn"]), 1, MB)
    message = err.value.message
    assert f"1 of the 2 WAL segments from {first['name']}" in message and f"{first['name']}: missing" in message
    if source_type == "pg_wal":
        assert f"{first['name']} is older than the oldest segment in {source} ({second['name']}): the server removed or recycled it" in message
        assert "archive_command" not in message
    else:
        assert f"{first['name']} was not archived into {source} (yet): pg_stat_archiver on db1:5432" in message
        assert "check archive_command on db1:5432" in message
    assert sorted(os.listdir(copy / "pg_wal")) == [second["name"]], "what was there is collected; nothing else is written"


# --- the role's words for the module's options ------------------------------------------------------


def _role_cause(msg: str, use_slot: bool) -> str:
    """The ``_cause`` of the standby_backup role's "Fail with the cause", rendered as Ansible would (its bool filter)."""
    tasks = yaml.safe_load((ROOT / "roles" / "standby_backup" / "tasks" / "main.yml").read_text())
    block = next(task for task in tasks if "rescue" in task)
    fail = next(task for task in block["rescue"] if task["name"] == "Fail with the cause")
    env = jinja2.Environment(autoescape=False)  # noqa: S701 - text for a terminal, as Ansible renders it
    env.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).lower() in ("true", "yes", "1")
    return env.from_string(fail["vars"]["_cause"]).render(ansible_failed_result={"msg": msg}, standby_backup_use_slot=use_slot)


def test_the_role_names_its_own_variables_for_a_recycled_segment(world):
    message = failure(world, [7, 8], "pg_wal")
    without_slot = _role_cause(message, use_slot=False)
    assert "with the role's slot on the standby (standby_backup_use_slot: true, the default)" in without_slot
    assert "(standby_backup_wal_source: archive, with standby_backup_archive_dir)" in without_slot
    assert not re.search(r"wal_retain|source_type|\btimeout\b", without_slot), without_slot
    with_slot = _role_cause(message, use_slot=True)
    assert "which was in place: see whether max_slot_wal_keep_size" in with_slot and "standby_backup_use_slot: true, the default" not in with_slot
    ahead = _role_cause(failure(world, [5, 6], "pg_wal"), use_slot=True)
    assert "raise standby_backup_wal_timeout or look at pg_stat_wal_receiver" in ahead
