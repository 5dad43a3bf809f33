"""After a restore: recovery configured by recovery_config, the restored data compared with the primary's, amcheck,
and the end of a backup read from its label or pg_control."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

from ansible_collections.pgbackup.lowlevel.plugins.module_utils.lsn import parse_lsn
from ansible_collections.pgbackup.lowlevel.plugins.module_utils.pg_control import read_control_file

from ..harness.pgbins import client_bindir
from ..harness.pgtools import tools_bindir
from .playbooks import run_playbook
from .waiting import wait_for


def configure_recovery(env, testbed, tmp_path: Path, data_dir: Path, *args: str, **config_args) -> tuple:
    inventory = testbed.write_inventory(tmp_path / "inventory" / "hosts.yml")
    result_file = tmp_path / f"config-{uuid.uuid4().hex[:8]}.json"
    extra = {"data_dir": str(data_dir), "config_args": config_args, "result_file": str(result_file)}
    proc = run_playbook(env, inventory, "recovery_config.yml", extra, "--limit", testbed.hosts[0].name, *args)
    return json.loads(result_file.read_text()), proc.stdout + proc.stderr


TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def amcheck(restored, pg_major: int) -> None:
    if pg_major == 13:  # Debian 15's pg_amcheck needs verify_heapam, which 13's amcheck lacks
        restored.sql(
            "SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
            "WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND c.relkind = 'i'"
        )
        return
    argv = [str(client_bindir() / "pg_amcheck"), "-h", str(restored.socket_dir), "-p", str(restored.port), "-U", "postgres"]
    proc = subprocess.run([*argv, "--heapallindexed", "--all"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def archived(primary, lsn: str) -> bool:
    (segment,) = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))[0]
    return (primary.archive_dir / segment).exists()


def fingerprints(cluster, tables) -> dict:
    out = {}
    for table in tables:
        (row,) = cluster.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t")  # noqa: S608
        out[table] = row
    return out


def recover_and_check(primary, restored, bed, env, tmp_path, pg_major: int, *, procedure: str, start_lsn: str, stop_lsn: str, canary: str) -> None:
    """Recover the labelled copy in ``restored`` to everything the primary's (stopped) load committed, and check it.

    The log shows redo from the label's start and consistency at or after the backup's end; the canary made after the start is
    there; every pgbench table equals the primary's; amcheck is clean. A killed pgbench's backend may still be finishing its
    COMMIT, so the point is taken once its sessions are gone, and its segment archived.
    """
    wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == [(0,)], "pgbench's sessions ending")
    (target,) = primary.sql("SELECT pg_current_wal_lsn()::text")[0]
    primary.sql("SELECT pg_switch_wal()")
    wait_for(lambda: archived(primary, target), "the target's segment being archived")
    end = backup_end(restored.datadir, procedure, stop_lsn)
    restored.write_settings()
    recover = {"mode": "recovery", "restore_command": f"cp {primary.archive_dir}/%f %p", "recovery_target_lsn": target, "recovery_target_action": "pause"}
    configured, _output = configure_recovery(env, bed, tmp_path, restored.datadir, **recover)
    assert configured.get("failed") is not True, configured
    restored.start()
    wait_for(lambda: restored.sql("SELECT pg_is_wal_replay_paused()")[0][0], "recovery pausing at the target")
    log = restored.log_file.read_text(errors="replace")
    # Redo starts at the label's start, or (13: when the start checkpoint's redo pointer is the checkpoint record
    # itself, as on an idle fresh server) at the record right after that checkpoint record.
    redo = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
    assert redo and 0 <= parse_lsn(redo.group(1)) - parse_lsn(start_lsn) < 0x200, (start_lsn, log[-4000:])
    consistent = re.search(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)", log)
    assert consistent and parse_lsn(consistent.group(1)) >= end, log[-4000:]
    assert restored.sql(f"SELECT answer FROM {canary}") == [(42,)]  # noqa: S608 - a name the test made
    assert fingerprints(restored, TABLES) == fingerprints(primary, TABLES)
    amcheck(restored, pg_major)


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


def manifest_clean(restored) -> None:
    """pg_verifybackup (parsing the WAL in pg_wal) on the labelled copy, with the tool of the copy's own major
    (harness/pgtools: another major's refuses or misreads its manifest and WAL)."""
    tool = tools_bindir(restored.pg.major) / "pg_verifybackup"
    done = subprocess.run([str(tool), str(restored.datadir)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{tool}: " + done.stdout + done.stderr


def checksums_clean(restored) -> None:
    """pg_checksums --check on the stopped cluster, with the tool of its own major."""
    tool = tools_bindir(restored.pg.major) / "pg_checksums"
    done = subprocess.run(["runuser", "-u", "postgres", "--", str(tool), "--check", "-D", str(restored.datadir)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{tool}: " + done.stdout + done.stderr
