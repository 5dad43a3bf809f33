"""The core library against real servers of every major: pg_control, WAL segments, labels, maps.

For each major: the pg_control parser agrees field by field with pg_control_system/checkpoint/recovery/init()
on the primary and the standby (and with pg_controldata on 15); the WAL validator accepts every segment of the
primary's real archive and refuses a real segment under a later name, a segment of another cluster, a truncated
file and a segment copied from pg_wal while it is being written; a backup's label, map and WAL range computed by
the library match what the server wrote and archived.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.backup_label import parse_backup_label
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.tablespace_map import parse_tablespace_map
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import (
    backup_history_file_name,
    classify_wal_file,
    end_segment_number,
    parse_wal_file_name,
    segment_number,
    segments_between,
    wal_file_name,
)
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_segment import validate_segment

from tests.unit.plugins.module_utils.control_views import controldata_view, normalise_sql

from .conftest import per_major_cache
from .harness.pgbins import client_bindir

pytestmark = pytest.mark.integration

CONTROL_SQL = (
    "SELECT row_to_json(s)::text, row_to_json(c)::text, row_to_json(r)::text, row_to_json(i)::text "
    "FROM pg_control_system() s, pg_control_checkpoint() c, pg_control_recovery() r, pg_control_init() i"
)


def sql_control(cluster) -> dict:
    row = cluster.sql(CONTROL_SQL)[0]
    return {name: json.loads(text) for name, text in zip(("system", "checkpoint", "recovery", "init"), row)}


def stable_control(cluster):
    """Our parse of the file on disk, with the SQL functions' view of it from just before and just after."""
    for _attempt in range(50):
        before = sql_control(cluster)
        parsed = read_control_file(str(cluster.datadir))
        after = sql_control(cluster)
        if before == after:
            return parsed, before
        time.sleep(0.1)
    raise AssertionError(f"pg_control of {cluster} kept changing")


def seg_size_of(cluster) -> int:
    return read_control_file(str(cluster.datadir)).xlog_seg_size


def switch_and_wait(cluster, rounds: int = 3) -> list[str]:
    """A little WAL and a segment switch, ``rounds`` times; returns the switched segments once archived."""
    cluster.sql("CREATE TABLE IF NOT EXISTS core_real (id serial, t text)")
    switched = []
    for n in range(rounds):
        cluster.sql("INSERT INTO core_real (t) SELECT repeat(md5(g::text), 20) FROM generate_series(1, %s) g", (500 * (n + 1),))
        end = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        switched.append(end)
    wait_archived(cluster, switched)
    return switched


def wait_archived(cluster, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((cluster.archive_dir / n).exists() for n in names):
            return
        time.sleep(0.2)
    missing = [n for n in names if not (cluster.archive_dir / n).exists()]
    archiver = cluster.sql("SELECT * FROM pg_stat_archiver")
    raise AssertionError(f"{cluster}: {missing} not archived after {timeout}s; archiver: {archiver}")


def archived_segments(cluster) -> list[Path]:
    return sorted(p for p in cluster.archive_dir.iterdir() if classify_wal_file(p.name) == "segment")


@pytest.fixture(scope="session")
def _others():
    return per_major_cache()


@pytest.fixture
def other_primary(testbed, pg_major, _others):
    """A second primary of the same major (another system identifier), made once per major."""
    if pg_major not in _others:
        _others[pg_major] = testbed.new_primary(pg_major, name=f"pg{pg_major}-core-other")
    cluster = _others[pg_major]
    if not cluster.is_running():
        cluster.start()
    return cluster


# --- pg_control -----------------------------------------------------------------------------------


def test_pg_control_agrees_with_the_sql_functions(primary_standby, pg_major):
    primary, standby = primary_standby
    primary.sql("CHECKPOINT")
    standby.wait_replayed()
    for cluster, state in ((primary, "in production"), (standby, "in archive recovery")):
        parsed, rows = stable_control(cluster)
        assert parsed.major_version == pg_major
        assert parsed.state_name == state
        ours, theirs = parsed.sql_view(), normalise_sql(rows)
        for group in ("system", "checkpoint", "recovery", "init"):
            assert sorted(ours[group]) == sorted(theirs[group]), f"{cluster} {group}"
            for key, value in theirs[group].items():
                assert ours[group][key] == value, f"{cluster} {group}.{key}"
    primary_facts = read_control_file(str(primary.datadir))
    standby_facts = read_control_file(str(standby.datadir))
    assert primary_facts.system_identifier == standby_facts.system_identifier
    assert standby_facts.in_recovery and not primary_facts.in_recovery


def test_pg_control_agrees_with_pg_controldata_on_15(primary_standby, pg_major):
    if pg_major != 15:
        pytest.skip("pg_controldata is Debian's 15: it reads only 15's pg_control reliably")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_", "LANG"))}
    env.update(TZ="UTC", LC_ALL="C")
    for cluster in primary_standby:
        for _attempt in range(50):
            before = read_control_file(str(cluster.datadir))
            out = subprocess.run([str(client_bindir() / "pg_controldata"), str(cluster.datadir)], check=True, capture_output=True, text=True, env=env)
            after = read_control_file(str(cluster.datadir))
            if before == after:
                break
            time.sleep(0.1)
        printed = {}
        for line in out.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                printed[key.strip()] = value.strip()
        assert controldata_view(after) == printed


# --- WAL segments -----------------------------------------------------------------------------------


def test_every_archived_segment_is_valid(primary_standby, pg_major):
    primary = primary_standby[0]
    switched = switch_and_wait(primary)
    control = read_control_file(str(primary.datadir))
    segments = archived_segments(primary)
    assert set(switched) <= {p.name for p in segments}
    for path in segments:
        result = validate_segment(
            str(path), file_name=path.name, system_identifier=control.system_identifier, seg_size=control.xlog_seg_size, major_version=pg_major
        )
        assert result.complete, path.name
        assert result.major_version == pg_major
    for name in switched:  # these end with the switch we asked for, zeros after it
        result = validate_segment(str(primary.archive_dir / name), file_name=name, system_identifier=control.system_identifier, seg_size=control.xlog_seg_size)
        assert result.switch_lsn is not None and result.zero_from_page is not None


def test_real_segments_are_refused_when_they_are_not_what_the_name_says(primary_standby, pg_major, other_primary, tmp_path):
    primary = primary_standby[0]
    name = switch_and_wait(primary, rounds=1)[0]
    control = read_control_file(str(primary.datadir))
    seg_size = control.xlog_seg_size
    kw = {"system_identifier": control.system_identifier, "seg_size": seg_size}
    data = (primary.archive_dir / name).read_bytes()
    tli, segno = parse_wal_file_name(name, seg_size)

    later = tmp_path / wal_file_name(tli, segno + 7, seg_size)
    later.write_bytes(data)
    with pytest.raises(PgBackupError, match="recycled or renamed") as err:
        validate_segment(str(later), file_name=later.name, **kw)
    assert len(err.value.details["problems"]) >= 1

    truncated = tmp_path / name
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(PgBackupError, match=f"has {len(data) // 3} bytes, expected {seg_size}"):
        validate_segment(str(truncated), file_name=name, **kw)

    other_name = switch_and_wait(other_primary, rounds=1)[0]
    assert seg_size_of(other_primary) == seg_size
    with pytest.raises(PgBackupError, match="another cluster"):
        validate_segment(str(other_primary.archive_dir / other_name), file_name=other_name, **kw)


def test_a_segment_copied_while_being_written(primary_standby, pg_major, tmp_path):
    primary = primary_standby[0]
    control = read_control_file(str(primary.datadir))
    kw = {"system_identifier": control.system_identifier, "seg_size": control.xlog_seg_size}
    for _attempt in range(20):
        primary.sql("CREATE TABLE IF NOT EXISTS core_real (id serial, t text)")
        primary.sql("INSERT INTO core_real (t) VALUES ('in the current segment')")
        flushed = parse_lsn(primary.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])
        if flushed % control.xlog_seg_size > 8192:
            break
        primary.sql("INSERT INTO core_real (t) SELECT 'filler' FROM generate_series(1, 100)")
    name = wal_file_name(control.timeline, end_segment_number(flushed, control.xlog_seg_size), control.xlog_seg_size)
    copy = tmp_path / name
    copy.write_bytes((primary.datadir / "pg_wal" / name).read_bytes())
    result = validate_segment(str(copy), file_name=name, complete=False, through_lsn=flushed, **kw)
    assert not result.complete and result.end_lsn >= flushed
    with pytest.raises(PgBackupError, match=r"without a WAL switch record|recycled or renamed"):
        validate_segment(str(copy), file_name=name, **kw)


# --- a backup: label, map and WAL range ----------------------------------------------------------------


def test_backup_label_and_wal_range_of_a_real_backup(primary_standby, pg_major, testbed):
    primary = primary_standby[0]
    control = read_control_file(str(primary.datadir))
    seg_size = control.xlog_seg_size
    conn = primary.connect()
    try:
        with conn.cursor() as cur:
            if pg_major >= 15:
                cur.execute("SELECT pg_backup_start('core real', true)::text")
            else:
                cur.execute("SELECT pg_start_backup('core real', true, false)::text")
            start = parse_lsn(cur.fetchone()[0])
            primary.sql("CREATE TABLE IF NOT EXISTS core_real (id serial, t text)")
            primary.sql("INSERT INTO core_real (t) SELECT 'during the backup' FROM generate_series(1, 1000)")
            if pg_major >= 15:
                cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)")
            else:
                cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)")
            stop_text, labelfile, spcmapfile = cur.fetchone()
    finally:
        conn.close()
    stop = parse_lsn(stop_text)
    label = parse_backup_label(labelfile, seg_size=seg_size)
    assert label.format() == labelfile
    assert label.start_lsn == start and label.backup_from == "primary" and label.backup_end_required
    assert label.start_wal_file == wal_file_name(label.start_timeline, segment_number(start, seg_size), seg_size)
    query = "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT LIKE 'pg_%'"
    expected_entries = [(int(oid), path) for oid, path in primary.sql(query)]
    assert parse_tablespace_map(spcmapfile or "", major_version=pg_major) == [e for e in expected_entries if e[1]]

    history_name = backup_history_file_name(label.start_timeline, start, seg_size)
    names = segments_between(start, stop, label.start_timeline, [], seg_size)
    wait_archived(primary, [*names, history_name])  # pg_backup_stop waited for them already
    history = parse_backup_label((primary.archive_dir / history_name).read_text(), seg_size=seg_size)
    assert history.stop_lsn == stop and history.start_lsn == start
    for name in names:
        result = validate_segment(
            str(primary.archive_dir / name),
            file_name=name,
            system_identifier=control.system_identifier,
            seg_size=seg_size,
            major_version=pg_major,
            through_lsn=stop if name == names[-1] else None,
        )
        assert result.complete
    assert names[-1] == wal_file_name(label.start_timeline, end_segment_number(stop, seg_size), seg_size)
