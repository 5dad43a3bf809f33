"""A standby-only backup whose stop LSN is exactly a segment boundary (X/Y000000), on real servers: the primary switched
WAL and wrote nothing more, the standby's restartpoint request moved its minimum recovery point to the end of the
switch record, and pg_backup_stop on the standby returned that. The segment before the boundary ends in the switch
record, so it holds valid WAL "through" the stop: wal_collect takes it at once (it used to wait out its whole timeout
and refuse a good copy), backup_verify accepts the copy. Negative control: that segment with its switch record damaged
is refused, naming it."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.errors import PgBackupError
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import format_lsn, parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import wal_file_name
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_collector import Collector, open_target
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal_source import WalSource

from .conftest import spot_check

pytestmark = pytest.mark.integration

SEG = 16 << 20


def _boundary_stop(primary, standby, keepers, dest) -> tuple:
    """Start on the standby, copy it, then stop where the standby's minimum recovery point is a segment boundary."""
    params = {"login_host": standby.host, "login_port": standby.port, "login_user": "postgres", "login_password": standby.password}
    keepers.mkdir(mode=0o700, exist_ok=True)
    started = backup_session.start_backup(params, backup_id="bnd", label="bnd", fast=True, max_duration=0, state_dir=str(keepers), timeout=120)
    source = Source(str(standby.datadir))
    plan = make_plan(source, str(dest), {}, [])
    check_destination(source, plan, str(dest), False)
    execute(source, plan, str(dest), parallel=2, owner="postgres")
    for _attempt in range(5):  # a background record (a running-xacts snapshot) may land after the switch: try again
        primary.sql("CREATE TABLE IF NOT EXISTS bnd_t AS SELECT 1 AS x")
        primary.sql("INSERT INTO bnd_t VALUES (2)")
        switched = parse_lsn(primary.sql("SELECT pg_switch_wal()::text")[0][0])
        boundary = -(-switched // SEG) * SEG  # the end of the switch record: the next segment's start
        standby.wait_replayed(format_lsn(boundary))
        standby.sql("CHECKPOINT")  # no new checkpoint record: the restartpoint is skipped but minRecoveryPoint moves to replay's end
        mrp = standby.sql("SELECT min_recovery_end_lsn::text FROM pg_control_recovery()")[0][0]
        if parse_lsn(mrp) == boundary:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the standby's minimum recovery point never settled on a segment boundary")
    stopped = backup_session.stop_backup(backup_id="bnd", state_dir=str(keepers), state="stopped", wait_for_archive=False, timeout=120)
    return started, stopped


def test_a_stop_on_a_segment_boundary_is_collected_at_once(primary_standby, testbed, tmp_path, pg_major):
    spot_check(pg_major, (13, 15, 18), "the segment math and the record check do not depend on the major")
    primary, standby = primary_standby
    dest = testbed.scratch_dir(f"bnd-{pg_major}")
    os.rmdir(dest)
    started, stopped = _boundary_stop(primary, standby, tmp_path / "keepers", dest)
    start, stop = parse_lsn(started["start_lsn"]), parse_lsn(stopped["stop_lsn"])
    assert stop % SEG == 0, f"the stop {stopped['stop_lsn']} is not on a segment boundary: nothing to test"
    last = wal_file_name(1, stop // SEG - 1, SEG)  # the segment that ends in the switch record

    # A short timeout: a collector that did not take the switch record as the end would wait for WAL "through" the
    # boundary that never comes, and refuse when it runs out.
    collector = Collector(open_target(str(dest)), WalSource(str(standby.datadir / "pg_wal")), source_type="pg_wal", timeout=3, poll_interval=0.5)
    plan, out = collector.run(start, 1, stop, 1, SEG)
    assert plan.segments[-1] == last and last in out.segments, (plan.segments, out.segments)

    # negative control: the same segment with its last page's records zeroed (the switch record gone) is refused
    damaged = dest / "pg_wal" / last
    data = bytearray(damaged.read_bytes())
    shutil.copy(damaged, tmp_path / last)
    end = len(data.rstrip(b"\0"))
    data[max(0, end - 64) : end] = bytes(min(64, end))
    source = tmp_path / "damaged-source"
    source.mkdir()
    for name in plan.segments:
        shutil.copy(standby.datadir / "pg_wal" / name, source / name)
    (source / last).write_bytes(bytes(data))
    os.unlink(damaged)
    with pytest.raises(PgBackupError) as refused:
        Collector(open_target(str(dest)), WalSource(str(source)), source_type="pg_wal", timeout=2, poll_interval=0.5).run(start, 1, stop, 1, SEG)
    assert last in refused.value.message, refused.value.message
    assert not damaged.exists(), "the damaged segment was not installed"
