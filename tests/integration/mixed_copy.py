"""Standby-only copies of a real standby under pgbench load, made with the library's own steps, either right
(global/pg_control copied last) or with the classic mistake: pg_control copied *first*, then pages written by a
restartpoint after it, then the rest. The second copy's pg_control ends recovery (its minRecoveryPoint) before the
changes some of its pages carry, so it starts, recovers and is silently inconsistent."""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

from ansible_collections.pgbackup.lowlevel.plugins.module_utils import copy_state, label_placer
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.copy_engine import Source, check_destination, execute, make_plan
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.manifest import write_manifest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.session import backup_session
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.wal import segments_between


def _private(path: Path) -> None:
    shutil.chown(path, "postgres", "postgres")
    os.chmod(path, 0o600)


def _wait_archived(primary, names: list, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all((primary.archive_dir / name).exists() for name in names):
        if time.monotonic() > deadline:
            missing = [n for n in names if not (primary.archive_dir / n).exists()]
            raise AssertionError(f"{primary.name} did not archive {missing} within {timeout}s")
        primary.sql("SELECT pg_switch_wal()")
        time.sleep(0.3)


def standby_only_copy(primary, standby, testbed, dest: Path, state_dir: Path, *, control_first: bool, backup_id: str) -> dict:
    """A finished standby-only backup of ``standby`` in ``dest`` (label placed, WAL in pg_wal, a manifest).

    ``control_first`` takes global/pg_control before anything else and makes the standby write newer pages (a primary
    checkpoint replayed, then a restartpoint) before the rest is copied. Returns the start and stop results, the stop
    LSN and timeline, and the minimum recovery point of the pg_control in the copy.
    """
    state_dir.mkdir(mode=0o700, exist_ok=True)
    params = {"login_host": standby.host, "login_port": standby.port, "login_user": "postgres", "login_password": standby.password}
    primary.pgbench_init()
    with testbed.load(primary, 60, clients=2):
        time.sleep(1)
        started = backup_session.start_backup(params, backup_id=backup_id, label=backup_id, fast=True, max_duration=0, state_dir=str(state_dir), timeout=120)
        early_control = (standby.datadir / "global" / "pg_control").read_bytes() if control_first else None
        time.sleep(1.5)  # pgbench changes pages after that pg_control was read
        primary.sql("CHECKPOINT")
        standby.wait_replayed()
        standby.sql("CHECKPOINT")  # a restartpoint: the changed pages reach the standby's disk, with their newer LSNs
        source = Source(str(standby.datadir))
        plan = make_plan(source, str(dest), {}, [])
        check_destination(source, plan, str(dest), False)
        execute(source, plan, str(dest), parallel=2, owner="postgres")
        if early_control is not None:
            (dest / copy_state.PENDING_CONTROL).write_bytes(early_control)
        stopped = backup_session.stop_backup(backup_id=backup_id, state_dir=str(state_dir), state="stopped", wait_for_archive=False, timeout=120)
    label = base64.b64decode(stopped["backup_label_base64"])
    label_placer.place(str(dest), label=label, tablespace_map=base64.b64decode(stopped["tablespace_map_base64"]), expected_start_lsn=started["start_lsn"])
    control = read_control_file(str(dest))
    # The copy's own end is its pg_control's minimum recovery point; the WAL goes up to the later of that and the stop.
    end = max(parse_lsn(stopped["stop_lsn"]), control.min_recovery_point)
    needed = segments_between(parse_lsn(started["start_lsn"]), end, stopped["stop_timeline"], [], control.xlog_seg_size)
    _wait_archived(primary, needed)
    for name in needed:
        shutil.copy2(primary.archive_dir / name, dest / "pg_wal" / name)
        _private(dest / "pg_wal" / name)
    write_manifest(str(dest), end_lsn=parse_lsn(stopped["stop_lsn"]), end_tli=stopped["stop_timeline"])
    _private(dest / "backup_manifest")
    return {
        "started": started,
        "stopped": stopped,
        "stop_lsn": stopped["stop_lsn"],
        "stop_timeline": stopped["stop_timeline"],
        "min_recovery_point": control.min_recovery_point,
        "wal": needed,
    }
