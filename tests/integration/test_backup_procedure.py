"""The whole backup procedure by hand on real PostgreSQL 13-18, pgbench writing throughout: coordinated (start and stop on
the primary, files from the standby) and standby-only. The copy is then recovered to a point after the backup: its log shows
redo from the label's start and consistency at or after the backup's end (see backup_end), the canary made after the start is there, amcheck
is clean, and every table equals the primary's at that point."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file

from .harness.pgbins import client_bindir
from .test_cluster_info import _playbook
from .test_recovery_config import _configure, _wait

pytestmark = pytest.mark.integration

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def backup_end(data_dir, mode: str, stop_lsn: str) -> int:
    """Where recovery of the copy may declare the backup finished.

    Coordinated (label says BACKUP FROM: primary): the end-of-backup record, which ends at the stop LSN. Standby-only
    (BACKUP FROM: standby): the minimum recovery point of the pg_control copied last, which pg_backup_stop's stop LSN (the
    standby's minimum recovery point at the stop) can only follow - so consistency may come before the stop LSN, as it
    does for pg_basebackup from a standby.
    """
    if mode == "coordinated":
        return parse_lsn(stop_lsn)
    end = read_control_file(str(data_dir)).min_recovery_point
    assert 0 < end <= parse_lsn(stop_lsn)
    return end


def _fingerprints(cluster, tables) -> dict:
    out = {}
    for table in tables:
        (row,) = cluster.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t")  # noqa: S608
        out[table] = row
    return out


def _archived(primary, lsn: str) -> bool:
    (segment,) = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))[0]
    return (primary.archive_dir / segment).exists()


def _amcheck(restored, pg_major: int) -> None:
    if pg_major == 13:  # Debian 15's pg_amcheck needs verify_heapam, which 13's amcheck lacks
        restored.sql(
            "SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
            "WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND c.relkind = 'i'"
        )
        return
    argv = [str(client_bindir() / "pg_amcheck"), "-h", str(restored.socket_dir), "-p", str(restored.port), "-U", "postgres"]
    proc = subprocess.run([*argv, "--heapallindexed", "--all"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def recover_and_check(primary, restored, bed, env, tmp_path, pg_major: int, *, procedure: str, start_lsn: str, stop_lsn: str, canary: str) -> None:
    """Recover the labelled copy in ``restored`` to everything the primary's (stopped) load committed, and check it.

    The log shows redo from the label's start and consistency at or after the backup's end; the canary made after the start is
    there; every pgbench table equals the primary's; amcheck is clean. A killed pgbench's backend may still be finishing its
    COMMIT, so the point is taken once its sessions are gone, and its segment archived.
    """
    _wait(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench's sessions ending")
    (target,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    primary.sql("SELECT pg_switch_wal()")
    _wait(lambda: _archived(primary, target), "the target's segment being archived")
    end = backup_end(restored.datadir, procedure, stop_lsn)
    restored.write_settings()
    recover = {"mode": "recovery", "restore_command": f"cp {primary.archive_dir}/%f %p", "recovery_target_lsn": target, "recovery_target_action": "pause"}
    configured, _output = _configure(env, bed, tmp_path, restored.datadir, **recover)
    assert configured.get("failed") is not True, configured
    restored.start()
    _wait(lambda: restored.sql("SELECT pg_is_wal_replay_paused()")[0][0], "recovery pausing at the target")
    log = restored.log_file.read_text(errors="replace")
    # Redo starts at the label's start, or (13: when the start checkpoint's redo pointer is the checkpoint record
    # itself, as on an idle fresh server) at the record right after that checkpoint record.
    redo = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
    assert redo and 0 <= parse_lsn(redo.group(1)) - parse_lsn(start_lsn) < 0x200, (start_lsn, log[-4000:])
    consistent = re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log)
    assert consistent and parse_lsn(consistent.group(1)) >= end, log[-4000:]
    assert restored.sql(f"SELECT answer FROM {canary}") == [(42,)]  # noqa: S608 - a name the test made
    assert _fingerprints(restored, TABLES) == _fingerprints(primary, TABLES)
    _amcheck(restored, pg_major)


@pytest.mark.parametrize("procedure", ["coordinated", "standby_only"])
def test_backup_from_standby_restores_consistent(primary_standby, testbed, ansible_env, tmp_path, pg_major, procedure):
    primary, standby = primary_standby
    primary.pgbench_init()
    primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    canary = f"bp_canary_{uuid.uuid4().hex[:8]}"
    restored = testbed.empty_cluster(pg_major, name=f"pg{pg_major}-bp-{procedure.replace('_', '-')}")
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / "procedure.json"
    extra = {
        "procedure": procedure,
        "primary_name": primary.name,
        "standby_name": standby.name,
        "dest": str(restored.datadir),
        "state_dir": str(tmp_path / "keepers"),
        "archive_dir": str(primary.archive_dir),
        "canary_table": canary,
        "result_file": str(result_file),
    }
    try:
        with testbed.load(primary, 300, clients=2) as load:
            time.sleep(1)
            _playbook(ansible_env, inventory, "backup_procedure.yml", extra, "--limit", testbed.hosts[0].name, check=False)
            results = json.loads(result_file.read_text())
            time.sleep(1)
            load.stop()
        assert results["failure"] is None, results
        started, stopped = results["started"], results["stopped"]
        assert started["server_role"] == ("primary" if procedure == "coordinated" else "standby")
        if procedure == "coordinated":
            assert parse_lsn(results["replayed"]["redo_lsn"]) >= parse_lsn(started["start_lsn"])
        assert results["placed"]["guarded"] is True and results["collected"]["segments"], results["collected"]

        recover_and_check(
            primary,
            restored,
            testbed,
            ansible_env,
            tmp_path,
            pg_major,
            procedure=procedure,
            start_lsn=started["start_lsn"],
            stop_lsn=stopped["stop_lsn"],
            canary=canary,
        )
    finally:
        if restored.is_running():
            restored.stop("immediate")
        primary.sql(f"DROP TABLE IF EXISTS {canary}")
